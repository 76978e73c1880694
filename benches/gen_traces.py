#!/usr/bin/env python3
"""Writes realistic tracer JSONL for benchmarks: OUT_DIR N [REQUEST_KB]

Each request is a real OpenCode 1.18.33 request from fixtures/traces (system prompt, tool
definitions, messages), with its conversation grown to about REQUEST_KB (default 50) KB the way a
long session grows, and a bearer key in its headers; each is followed by its streamed response.
Records are spread over session files like the tracer writes them.
"""
import json
import os
import sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
out, n = sys.argv[1], int(sys.argv[2])
target = int(sys.argv[3]) * 1024 if len(sys.argv) > 3 else 50 * 1024
os.makedirs(out, exist_ok=True)

base_req = base_resp = None
with open(os.path.join(root, "fixtures/traces/session-plain.jsonl")) as f:
    for line in f:
        rec = json.loads(line)
        # The largest request: the real conversation turn, not the title call.
        if rec["kind"] == "request" and (base_req is None or len(line) > len(json.dumps(base_req))):
            base_req = rec
        elif rec["kind"] == "response":
            base_resp = rec

turns = [
    {"role": "user", "content": "Please look at src/parser.rs and explain why the tokenizer drops the last byte when the input ends without a newline; then propose a fix."},
    {"role": "assistant", "content": "The loop in `next_token` stops at `len - 1` because it peeks one byte ahead. " * 6},
]
files = [open(os.path.join(out, f"2026-04-25-10-41-{i:02d}-session.jsonl"), "w") for i in range(8)]
written = 0
for i in range(n):
    req = json.loads(json.dumps(base_req))
    msgs = req["body"]["messages"]
    k = 0
    while len(json.dumps(req)) < target:
        t = dict(turns[k % 2])
        t["content"] = f"[turn {k}] " + t["content"]
        msgs.insert(len(msgs) - 1, t)
        k += 1
    sid = f"ses_bench{i % 8:02d}"
    req.update(id=i + 1, sessionID=sid, timestamp=f"2026-04-25T02:{(i // 60) % 60:02d}:{i % 60:02d}.000Z")
    req["headers"]["authorization"] = "Bearer sk-bench-0123456789abcdefghijklmnop"
    req["headers"]["x-session-id"] = sid
    resp = dict(base_resp, id=i + 1, sessionID=sid, timestamp=req["timestamp"])
    f = files[i % 8]
    for rec in (req, resp):
        line = json.dumps(rec, separators=(",", ":")) + "\n"
        f.write(line)
        written += len(line)
for f in files:
    f.close()
print(f"{n} requests + {n} responses, {written / 1e6:.1f} MB in {out}")
