#!/usr/bin/env python3
"""Benchmark: commit-to-event latency of the `opencode_storage` source in a running pipeline.

    benches/storage_latency.py [--messages 500] [--interval-ms 20] [--history 100000] [--feed event|rows]

`--feed rows` drops the `event` table first, as OpenCode 1.2 - 1.13 databases have none: the
source then follows the rows (new rowids, data_version), and the writer commits only the row.

A copy of a generated OpenCode database (benches/gen_opencode_db.py) is followed by
`ocpipe run` (opencode_storage -> jsonl). After the backfill, a writer commits messages the
way OpenCode does (a `message` row and its `message.updated.1` change-feed row in one
transaction), one every --interval-ms, each carrying its commit time. `ocpipe tap` on the
source prints the events as they leave it; latency = arrival - commit. Prints p50, p99 and max
beside a baseline: the same writer and a reader polling the database itself every 10 ms (what
a watcher without notifications would see). Target: p99 <= 100 ms.
"""
import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ocpipe")


def now_ms():
    return time.time() * 1000.0


def writer(db, n, interval, started, prefix, feed="event"):
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 5000")
    session, data = conn.execute(
        "SELECT session_id, data FROM message WHERE json_extract(data, '$.role') = 'assistant' LIMIT 1").fetchone()
    base = json.loads(data)
    started.set()
    for i in range(n):
        t = now_ms()
        msg = dict(base, time={"created": int(t) - 1000, "completed": t})
        msg["tokens"] = dict(base["tokens"], input=1000 + i)
        mid = f"msg_{prefix}_{i:06d}"
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO message (id, session_id, time_created, time_updated, data) VALUES (?,?,?,?,?)",
                     (mid, session, int(t), int(t), json.dumps(msg)))
        info = dict(msg, id=mid, sessionID=session)
        if feed == "event":
            conn.execute("INSERT INTO event (id, aggregate_id, seq, type, data) VALUES (?,?,?,?,?)",
                         (f"evt_{prefix}_{i:06d}", session, (20_000_000 if prefix == "base" else 10_000_000) + i,
                          "message.updated.1", json.dumps({"sessionID": session, "info": info})))
        conn.execute("COMMIT")
        time.sleep(interval / 1000.0)
    conn.close()


def percentiles(xs):
    xs = sorted(xs)
    return statistics.median(xs), xs[min(len(xs) - 1, int(len(xs) * 0.99))], xs[-1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--interval-ms", type=float, default=20)
    ap.add_argument("--history", type=int, default=100000)
    ap.add_argument("--feed", choices=["event", "rows"], default="event")
    args = ap.parse_args()
    table = "event" if args.feed == "event" else "message"
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    ocpipe = os.path.join(ROOT, "target/release/ocpipe")
    src = os.path.join(CACHE, "bench", f"opencode-{args.history}.db")
    if not os.path.exists(src):
        os.makedirs(os.path.dirname(src), exist_ok=True)
        subprocess.run([sys.executable, os.path.join(ROOT, "benches/gen_opencode_db.py"), src, str(args.history)], check=True)
    work = tempfile.mkdtemp(prefix="ocpipe-latency-")
    results = {}
    try:
        data = os.path.join(work, "opencode")
        os.makedirs(data)
        db = os.path.join(data, "opencode.db")
        shutil.copy(src, db)
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA journal_mode = WAL")
        if args.feed == "rows":
            conn.execute("DROP TABLE event")
        conn.close()
        pipeline = os.path.join(work, "p.toml")
        with open(pipeline, "w") as f:
            f.write(f'[sources.opencode]\ntype = "opencode_storage"\ndata_dir = "{data}"\nparts = false\n'
                    f'[sinks.out]\ntype = "jsonl"\ninputs = ["opencode"]\npath = "{work}/out/events.jsonl"\n')
        env = dict(os.environ, OCPIPE_DATA_DIR=os.path.join(work, "state"), XDG_CACHE_HOME=os.path.join(work, "cache"))
        run = subprocess.Popen([ocpipe, "--log-level", "warn", "run", pipeline], env=env)
        try:
            # Wait for the backfill to be delivered.
            deadline = time.time() + 120
            while time.time() < deadline:
                top = subprocess.run([ocpipe, "top", "--once"], env=env, capture_output=True, text=True)
                if top.returncode == 0:
                    rows = {r["id"]: r for r in json.loads(top.stdout)}
                    if rows["out"]["received"] >= args.history and rows["opencode"]["sent"] == rows["out"]["received"]:
                        break
                time.sleep(0.2)
            tap = subprocess.Popen([ocpipe, "tap", "opencode", "--limit", str(args.messages)], env=env,
                                   stdout=subprocess.PIPE, text=True, bufsize=1)
            time.sleep(0.5)
            started = threading.Event()
            w = threading.Thread(target=writer, args=(db, args.messages, args.interval_ms, started, "lat", args.feed))
            w.start()
            lat = []
            for line in tap.stdout:
                arrived = now_ms()
                ev = json.loads(line)["event"]
                if str(ev.get("id", "")).startswith("msg_lat_") and ev.get("timeCompleted"):
                    lat.append(arrived - ev["timeCompleted"])
            w.join()
            results[f"ocpipe (notify + {args.feed} feed), via ocpipe tap"] = lat
        finally:
            run.terminate()
            run.wait()

        # Baseline: the same writer, and a reader polling the table every 10 ms.
        conn = sqlite3.connect(db)
        last = conn.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0]
        conn.close()
        started = threading.Event()
        w = threading.Thread(target=writer, args=(db, args.messages, args.interval_ms, started, "base", args.feed))
        seen = []
        reader = sqlite3.connect(db)
        w.start()
        started.wait()
        deadline = time.time() + args.messages * args.interval_ms / 1000.0 + 10
        while len(seen) < args.messages and time.time() < deadline:
            for rowid, d in reader.execute(f"SELECT rowid, data FROM {table} WHERE rowid > ?", (last,)):
                last = rowid
                d = json.loads(d)
                seen.append(now_ms() - d.get("info", d)["time"]["completed"])
            time.sleep(0.010)
        w.join()
        results["baseline: sqlite3 polling every 10 ms"] = seen
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\ncommit-to-event latency, {args.messages} messages every {args.interval_ms:g} ms, over {args.history:,} messages of history")
    print(f"{'':48} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'events':>7}")
    for name, xs in results.items():
        if not xs:
            print(f"{name:48} no events")
            continue
        p50, p99, mx = percentiles(xs)
        print(f"{name:48} {p50:8.1f} {p99:8.1f} {mx:8.1f} {len(xs):7}")
    ours = results.get(f"ocpipe (notify + {args.feed} feed), via ocpipe tap") or [float("inf")]
    p99 = percentiles(ours)[1]
    print(f"target p99 <= 100 ms: {'met' if p99 <= 100 else 'NOT met'} ({p99:.1f} ms)")


if __name__ == "__main__":
    main()
