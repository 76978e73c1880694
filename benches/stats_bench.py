#!/usr/bin/env python3
"""Benchmark: `ocpipe stats` over a full OpenCode history, side by side with its peers.

    benches/stats_bench.py [--sizes 100000,1000000] [--runs 5] [--skip opencode,tokscale]

For each size, a realistic opencode.db (benches/gen_opencode_db.py, schema of a real 1.18.33)
is generated once and cached. Then, in one run, each of these reads the same file:

- ocpipe, cold: `ocpipe stats` with no index yet (it reads everything and writes its index);
- ocpipe, warm: again, nothing changed (answered from the index);
- ocpipe, warm after 1,000 new messages (reads only the new rows);
- `ocpipe tui`'s first screen (`--snapshot 1`), cold and warm;
- sqlite3: summing the token fields with json_extract grouped by model (the floor of "just read
  it");
- `opencode stats --models` (opencode-ai 1.18.33), `ccusage opencode daily` (20.0.24, offline)
  and `tokscale models --opencode` (under bun, price cache filled from the litellm wheel).

Prints median wall time and peak resident memory of each, and the ratios to ocpipe's cold run.
Needs python3, sqlite3, npm and pip; installs the peers under ~/.cache/ocpipe.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ocpipe")
PEERS = os.path.join(CACHE, "peers")


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def install_peers(skip):
    tools = {}
    if "opencode" not in skip:
        out = subprocess.run([os.path.join(ROOT, "fixtures/tools/opencode-bin.sh")], capture_output=True, text=True)
        if out.returncode == 0:
            tools["opencode"] = out.stdout.strip()
        else:
            print("opencode: not available:", out.stderr.strip(), file=sys.stderr)
    want = [p for p, name in [("ccusage@20.0.24", "ccusage"), ("tokscale", "tokscale"), ("bun", "bun")]
            if name not in skip and not (name == "bun" and "tokscale" in skip)]
    if want:
        os.makedirs(PEERS, exist_ok=True)
        if not all(os.path.exists(os.path.join(PEERS, "node_modules/.bin", p.split("@")[0])) for p in want):
            sh(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"] + want, cwd=PEERS, stdout=subprocess.DEVNULL)
        for name in ("ccusage", "tokscale", "bun"):
            path = os.path.join(PEERS, "node_modules/.bin", name)
            if os.path.exists(path) and name not in skip:
                tools[name] = path
    return tools


def litellm_prices():
    """tokscale fetches prices at run time; offline, its cache is filled from the litellm wheel."""
    dest = os.path.join(CACHE, "litellm-prices.json")
    if not os.path.exists(dest):
        tmp = tempfile.mkdtemp()
        sh([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "litellm", "-d", tmp])
        whl = [f for f in os.listdir(tmp) if f.endswith(".whl")][0]
        with zipfile.ZipFile(os.path.join(tmp, whl)) as z:
            name = [n for n in z.namelist() if n.endswith("model_prices_and_context_window_backup.json")][0]
            data = json.loads(z.read(name))
        data.pop("sample_spec", None)
        with open(dest, "w") as f:
            json.dump(data, f)
        shutil.rmtree(tmp)
    return dest


def measure(cmd, env, runs, prepare=None):
    """Median wall seconds and median peak RSS (MB) over `runs` runs of `cmd`."""
    walls, rss = [], []
    for _ in range(runs):
        if prepare:
            prepare()
        t = time.monotonic()
        out = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        walls.append(time.monotonic() - t)
        kb = out.stderr.strip().splitlines()[-1]
        if out.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {out.stderr[-500:]}")
        rss.append(int(kb) / 1024)
    return statistics.median(walls), statistics.median(rss)


def add_messages(db, n):
    """Appends n messages (copies of existing ones under new ids and later times)."""
    sh(["sqlite3", db, f"""
        INSERT INTO message (id, session_id, time_created, time_updated, data)
        SELECT 'msg_bench_' || (SELECT count(*) FROM message) || '_' || rowid, session_id, time_created + 86400000,
               time_updated + 86400000, json_set(data, '$.time.created', time_created + 86400000)
        FROM message ORDER BY rowid DESC LIMIT {n};"""])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--peer-runs", type=int, default=None, help="runs for the peers (default: --runs)")
    ap.add_argument("--skip", default="", help="comma-separated: opencode,ccusage,tokscale")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    peer_runs = args.peer_runs or args.runs
    sh(["cargo", "build", "--release", "--quiet"], cwd=ROOT)
    ocpipe = os.path.join(ROOT, "target/release/ocpipe")
    tools = install_peers(skip)
    prices = litellm_prices() if "tokscale" in tools else None
    os.makedirs(os.path.join(CACHE, "bench"), exist_ok=True)

    for size in [int(s) for s in args.sizes.split(",")]:
        src = os.path.join(CACHE, "bench", f"opencode-{size}.db")
        if not os.path.exists(src):
            sh([sys.executable, os.path.join(ROOT, "benches/gen_opencode_db.py"), src, str(size)])
        work = tempfile.mkdtemp(prefix="ocpipe-bench-")
        try:
            data = os.path.join(work, "data/opencode")
            os.makedirs(data)
            db = os.path.join(data, "opencode.db")
            shutil.copy(src, db)
            env = dict(os.environ, HOME=os.path.join(work, "home"), XDG_DATA_HOME=os.path.join(work, "data"),
                       XDG_CONFIG_HOME=os.path.join(work, "config"), XDG_CACHE_HOME=os.path.join(work, "cache"),
                       XDG_STATE_HOME=os.path.join(work, "state"), OPENCODE_DISABLE_MODELS_FETCH="1")
            os.makedirs(env["HOME"], exist_ok=True)
            if prices:
                os.makedirs(os.path.join(env["XDG_CACHE_HOME"], "tokscale"), exist_ok=True)
                with open(prices) as f:
                    cached = {"timestamp": int(time.time()), "data": json.load(f)}
                with open(os.path.join(env["XDG_CACHE_HOME"], "tokscale/pricing-litellm.json"), "w") as f:
                    json.dump(cached, f)
            index_dir = os.path.join(env["XDG_CACHE_HOME"], "ocpipe")
            results = {}
            stats = [ocpipe, "stats", "--db", db]
            results["ocpipe cold (no index)"] = measure(stats, env, args.runs, lambda: shutil.rmtree(index_dir, ignore_errors=True))
            results["ocpipe warm (unchanged)"] = measure(stats, env, args.runs)
            pristine = os.path.join(work, "pristine.db")
            shutil.copy(db, pristine)

            def changed():
                shutil.copy(pristine, db)
                for suffix in ("-wal", "-shm"):
                    if os.path.exists(db + suffix):
                        os.remove(db + suffix)
                subprocess.run(stats, env=env, stdout=subprocess.DEVNULL, check=True)
                add_messages(db, 1000)
            results["ocpipe warm (+1,000 messages)"] = measure(stats, env, args.runs, changed)
            shutil.copy(pristine, db)
            # `ocpipe tui`'s first screen (the Overview, processes included) printed as text:
            # the same load, sums and drawing as the interactive first screen.
            tui = [ocpipe, "tui", "--snapshot", "1", "--db", db]
            results["ocpipe tui first screen, cold"] = measure(tui, env, args.runs, lambda: shutil.rmtree(index_dir, ignore_errors=True))
            results["ocpipe tui first screen, warm"] = measure(tui, env, args.runs)
            floor = ("SELECT json_extract(data, '$.providerID') || '/' || json_extract(data, '$.modelID'), "
                     "sum(json_extract(data, '$.tokens.input')), sum(json_extract(data, '$.tokens.output')), "
                     "sum(json_extract(data, '$.tokens.reasoning')), sum(json_extract(data, '$.tokens.cache.read')), "
                     "sum(json_extract(data, '$.tokens.cache.write')) FROM message GROUP BY 1")
            results["sqlite3 json_extract (floor)"] = measure(["sqlite3", db, floor], env, args.runs)
            if "ccusage" in tools:
                results["ccusage opencode daily"] = measure([tools["ccusage"], "opencode", "daily", "--offline", "--json"], env, peer_runs)
            if "tokscale" in tools:
                results["tokscale models --opencode"] = measure([tools["bun"], tools["tokscale"], "models", "--json", "--opencode", "--no-spinner"], env, peer_runs)
            if "opencode" in tools:
                results["opencode stats --models"] = measure([tools["opencode"], "stats", "--models"], env, peer_runs)

            base = results["ocpipe cold (no index)"][0]
            peers = [v[0] for k, v in results.items() if k.startswith(("ccusage", "tokscale", "opencode"))]
            print(f"\n{size:,} messages ({os.path.getsize(src) / 1e6:.0f} MB database), medians of {args.runs} (peers {peer_runs})")
            print(f"{'':34} {'wall s':>9} {'peak MB':>9} {'vs ocpipe cold':>15}")
            for name, (wall, mb) in results.items():
                print(f"{name:34} {wall:9.3f} {mb:9.1f} {wall / base:14.1f}x")
            if peers:
                fastest = min(peers)
                print(f"ocpipe cold is {fastest / base:.1f}x faster than the fastest peer "
                      f"(target >= 10x: {'met' if fastest / base >= 10 else 'NOT met'}); "
                      f"vs the sqlite3 floor {results['sqlite3 json_extract (floor)'][0] / base:.1f}x")
            if peers:
                print(f"ocpipe cold {base:.3f} s vs a tenth of the fastest peer {fastest / 10:.3f} s "
                      f"(target <= 0.8 s: {'met' if base <= 0.8 else 'NOT met'})")
            print(f"peak memory, cold: {results['ocpipe cold (no index)'][1]:.0f} MB (target <= 100 MB); "
                  f"warm unchanged: {results['ocpipe warm (unchanged)'][0] * 1000:.0f} ms (target <= 100 ms)")
            cold, warm = results["ocpipe tui first screen, cold"][0], results["ocpipe tui first screen, warm"][0]
            print(f"tui first screen: cold {cold:.3f} s (target <= 1.5 s, {cold / base:.2f}x stats cold), "
                  f"warm {warm:.3f} s (target <= 0.2 s, {warm / results['ocpipe warm (unchanged)'][0]:.2f}x stats warm)")
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
