#!/usr/bin/env python3
"""Benchmark: the first load of the main job's page over a full OpenCode history.

    benches/dashboard_bench.py [--messages 1000000] [--runs 5]

Generates (once, cached) a realistic opencode.db (benches/gen_opencode_db.py), runs
`ocpipe run pipelines/monitor.toml` over it until the page's usage equals `ocpipe stats`
(the backfill), then times what a first visit asks for — `/` and the requests its script makes
(`/api/usage?…&by=day`, `…&by=model`, `/api/sessions`, `/api/status`, `/api/processes`,
push targets), for the week and for all — and the page in headless Chromium: when its script
has drawn the usage (`data-first-draw-ms`, from the navigation's start), and the whole run
beside Chromium loading `/api/health` (the browser's own start, the baseline). Prints medians and
the pipeline's RSS.
Needs python3, sqlite3 and chromium.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ocpipe", "bench")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get(url):
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read()


def median_time(f, runs):
    times = []
    for _ in range(runs):
        t = time.monotonic()
        f()
        times.append(time.monotonic() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    ocpipe = os.path.join(ROOT, "target/release/ocpipe")
    os.makedirs(CACHE, exist_ok=True)
    src = os.path.join(CACHE, f"opencode-{args.messages}.db")
    if not os.path.exists(src):
        subprocess.run([sys.executable, os.path.join(ROOT, "benches/gen_opencode_db.py"), src, str(args.messages)], check=True)
    work = tempfile.mkdtemp(prefix="ocpipe-dash-")
    proc = None
    try:
        data = os.path.join(work, "data/opencode")
        os.makedirs(data)
        os.makedirs(os.path.join(work, "home"))
        shutil.copy(src, os.path.join(data, "opencode.db"))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = dict(os.environ, XDG_DATA_HOME=os.path.join(work, "data"), HOME=os.path.join(work, "home"),
                   OCPIPE_OUT=os.path.join(work, "out"), OCPIPE_DATA_DIR=os.path.join(work, "state"),
                   OCPIPE_HTTP=f"127.0.0.1:{port}", XDG_CACHE_HOME=os.path.join(work, "cache"))
        stats = json.loads(subprocess.run([ocpipe, "stats", "--json", "--db", os.path.join(data, "opencode.db"), "--range", "all"],
                                          env=env, capture_output=True, check=True).stdout)
        want = stats["totals"]["messages"]
        started = time.monotonic()
        proc = subprocess.Popen([ocpipe, "run", "pipelines/monitor.toml"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while True:
            try:
                got = json.loads(get(base + "/api/usage?range=all&by=all"))["data"]["totals"]["messages"]
                if got == want:
                    break
            except Exception:
                pass
            if proc.poll() is not None:
                raise RuntimeError("ocpipe exited")
            time.sleep(1)
        backfill = time.monotonic() - started
        time.sleep(3)
        rss = int([l for l in open(f"/proc/{proc.pid}/status") if l.startswith("VmRSS")][0].split()[1]) / 1024
        print(f"\n{args.messages:,} messages: backfill through monitor.toml {backfill:.1f} s; the pipeline's RSS then {rss:.0f} MB")
        print(f"{'what a first visit asks for':46} {'median s':>9}")
        results = {}
        for rng in ("week", "all"):
            paths = ["/", f"/api/usage?range={rng}&by=day", f"/api/usage?range={rng}&by=model",
                     f"/api/sessions?range={rng}&limit=500", "/api/status", "/api/processes", "/api/mqtt", "/api/ble"]
            for p in paths[1:4]:
                results[f"{p}"] = median_time(lambda: get(base + p), args.runs)
            results[f"all requests of a first visit ({rng})"] = median_time(lambda: [get(base + p) for p in paths], args.runs)
        for k, v in results.items():
            print(f"{k:46} {v:9.3f}")
        chromium = shutil.which("chromium")
        if chromium:
            flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--no-first-run", "--virtual-time-budget=2000", "--dump-dom"]
            def load(url):
                out = subprocess.run(flags + [url], capture_output=True, text=True).stdout
                return out
            def first_draw(url):
                dom = load(url)
                assert 'data-first-draw-ms="' in dom, "the page drew no usage"
                return int(dom.split('data-first-draw-ms="')[1].split('"')[0]) / 1000
            baseline = median_time(lambda: load(base + "/api/health"), args.runs)
            for rng in ("week", "all"):
                url = base + f"/?range={rng}&lang=en"
                whole = median_time(lambda: load(url), args.runs)
                drawn = statistics.median(first_draw(url) for _ in range(args.runs))
                print(f"page, {rng:5}: usage drawn {drawn:.3f} s after navigation start (target <= 1 s: "
                      f"{'met' if drawn <= 1 else 'NOT met'}); Chromium start to end {whole:.3f} s beside "
                      f"{baseline:.3f} s for /api/health (the browser's own start), {whole / baseline:.2f}x")
    finally:
        if proc:
            proc.terminate()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
