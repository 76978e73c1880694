#!/usr/bin/env python3
"""Writes a realistic OpenCode 1.18.33 database: gen_opencode_db.py OUT.db MESSAGES [SEED]

Schema: fixtures/storage/opencode-1.18.33-schema.sql (from a real 1.18.33 database). Message
and part JSON have the shapes real runs store (fixtures/storage/v1.18.33-fork): user messages
and assistant messages with tokens, cost, model, agent and path; one step-finish part per
assistant message. About 40 messages per session over the last 90 days, 6 models from 4
providers, 4 agents, 3 projects plus global; 1% of sessions are forks that copy their parent's
history (same time.created, model and tokens, new ids), as OpenCode does.
"""
import json
import os
import random
import sqlite3
import string
import sys
import time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
final, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 42)
out = final + ".partial"  # renamed when complete, so an interrupted run leaves nothing behind
for stale in (out, out + "-wal", out + "-shm"):
    if os.path.exists(stale):
        os.remove(stale)
db = sqlite3.connect(out)
db.executescript(open(os.path.join(root, "fixtures/storage/opencode-1.18.33-schema.sql")).read())
# OpenCode's migration bookkeeping, as a real 1.18.33 database has it (else OpenCode migrates
# again and fails on existing tables).
real = sqlite3.connect(os.path.join(root, "fixtures/storage/v1.18.33-fork/opencode.db"))
db.executemany("INSERT INTO migration (id, time_completed) VALUES (?, ?)", real.execute("SELECT id, time_completed FROM migration"))
for row in real.execute("SELECT * FROM data_migration"):
    db.execute(f"INSERT INTO data_migration VALUES ({','.join('?' * len(row))})", row)
real.close()
db.commit()
db.execute("PRAGMA journal_mode = WAL")
db.execute("PRAGMA synchronous = OFF")

MODELS = [("anthropic", "claude-sonnet-4-5", 3e-6, 15e-6), ("anthropic", "claude-haiku-4-5", 1e-6, 5e-6),
          ("openai", "gpt-5.2-codex", 1.25e-6, 10e-6), ("openai", "gpt-5-mini", 0.25e-6, 2e-6),
          ("zai-coding-plan", "glm-4.7", 0, 0), ("google", "gemini-3-pro", 2e-6, 12e-6)]
AGENTS = ["build", "plan", "general", "explore"]
PROJECTS = [("global", "/"), ("prj_a1b2c3", "/home/dev/projects/agent-monitor"),
            ("prj_d4e5f6", "/home/dev/projects/persona"), ("prj_g7h8i9", "/home/dev/work/api-server")]
for pid, wt in PROJECTS:
    db.execute("INSERT INTO project (id, worktree, vcs, name, time_created, time_updated, sandboxes) VALUES (?,?,?,?,?,?,?)",
               (pid, wt, None if pid == "global" else "git", None, 0, 0, "[]"))

counter = [0]
def ident(prefix):
    counter[0] += 1
    return prefix + "_" + format(0x1fedb0000000 + counter[0], "x") + "".join(rng.choices(string.ascii_letters + string.digits, k=14))

now_ms = int(time.time() * 1000)
start_ms = now_ms - 90 * 86400 * 1000
sessions, messages, parts = [], [], []
made = 0
history = {}
while made < n:
    pid, wt = rng.choice(PROJECTS)
    sid = ident("ses")
    t = rng.randint(start_ms, now_ms - 3600_000)
    fork_of = None
    if history and rng.random() < 0.01:
        fork_of = rng.choice(list(history))
    prov, model, pin, pout = rng.choice(MODELS)
    agent = rng.choices(AGENTS, weights=[70, 10, 10, 10])[0]
    title = "Session " + "".join(rng.choices(string.ascii_lowercase + " ", k=30)).strip()
    sessions.append((sid, pid, None, "x-" + sid[-6:], wt if pid != "global" else "/home/dev", title + (" (fork #1)" if fork_of else ""),
                     "1.18.33", t, t + 60_000))
    msgs = []
    if fork_of:
        # A fork copies its parent's messages under new ids, unchanged otherwise.
        for (data, created) in history[fork_of]:
            msgs.append((ident("msg"), sid, created, data))
    turns = max(1, int(rng.gauss(20, 8)))
    for _ in range(turns):
        if made + len(msgs) + 2 > n:
            break
        t += rng.randint(2_000, 120_000)
        uid = ident("msg")
        user = {"role": "user", "time": {"created": t}, "agent": agent, "model": {"providerID": prov, "modelID": model}, "summary": {"diffs": []}}
        msgs.append((uid, sid, t, json.dumps(user, separators=(",", ":"))))
        t += rng.randint(500, 30_000)
        prompt = rng.randint(2_000, 120_000)
        cached = int(prompt * rng.random() * 0.9)
        out_t = rng.randint(5, 4_000)
        reason = rng.randint(0, out_t) if rng.random() < 0.3 else 0
        tokens = {"total": prompt + out_t, "input": prompt - cached, "output": out_t - reason, "reasoning": reason,
                  "cache": {"write": 0, "read": cached}}
        cost = round((prompt - cached) * pin + cached * pin * 0.1 + out_t * pout, 8)
        a = {"parentID": uid, "role": "assistant", "mode": agent, "agent": agent, "path": {"cwd": wt, "root": wt},
             "cost": cost, "tokens": tokens, "modelID": model, "providerID": prov,
             "time": {"created": t, "completed": t + rng.randint(1_000, 60_000)},
             "finish": rng.choice(["stop", "tool-calls", "tool-calls", "stop"])}
        aid = ident("msg")
        msgs.append((aid, sid, t, json.dumps(a, separators=(",", ":"))))
        parts.append((ident("prt"), aid, sid, t, t, json.dumps({"type": "step-finish", "reason": a["finish"], "snapshot": "4b825dc6", "cost": cost, "tokens": tokens}, separators=(",", ":"))))
    history[sid] = [(m[3], m[2]) for m in msgs]
    if len(history) > 200:
        history.pop(next(iter(history)))
    messages.extend(msgs)
    made += len(msgs)
    if len(messages) > 50_000:
        db.executemany("INSERT INTO session (id, project_id, parent_id, slug, directory, title, version, time_created, time_updated) VALUES (?,?,?,?,?,?,?,?,?)", sessions)
        db.executemany("INSERT INTO message (id, session_id, time_created, time_updated, data) VALUES (?,?,?,?,?)", [(i, s, c, c, d) for (i, s, c, d) in messages])
        db.executemany("INSERT INTO part (id, message_id, session_id, time_created, time_updated, data) VALUES (?,?,?,?,?,?)", parts)
        sessions, messages, parts = [], [], []
db.executemany("INSERT INTO session (id, project_id, parent_id, slug, directory, title, version, time_created, time_updated) VALUES (?,?,?,?,?,?,?,?,?)", sessions)
db.executemany("INSERT INTO message (id, session_id, time_created, time_updated, data) VALUES (?,?,?,?,?)", [(i, s, c, c, d) for (i, s, c, d) in messages])
db.executemany("INSERT INTO part (id, message_id, session_id, time_created, time_updated, data) VALUES (?,?,?,?,?,?)", parts)
db.commit()
db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
count = db.execute("SELECT count(*) FROM message").fetchone()[0]
sess = db.execute("SELECT count(*) FROM session").fetchone()[0]
db.close()
os.replace(out, final)
print(f"{final}: {count} messages in {sess} sessions, {os.path.getsize(final) / 1e6:.0f} MB")
