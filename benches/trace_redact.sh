#!/usr/bin/env bash
# Benchmark: realistic tracer JSONL (~50 KB requests) -> redact -> jsonl, on one core, beside jq
# doing the same header redaction on the same files. Prints MB/s for both and the ratio.
#   benches/trace_redact.sh [REQUESTS]     (default 2000: about 100 MB of ~50 KB requests and their responses)
# Needs: hyperfine, jq, python3, taskset; builds ocpipe in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000}
for p in hyperfine jq python3 taskset; do command -v $p >/dev/null || { echo "benchmark needs $p" >&2; exit 2; }; done
cargo build --release --quiet
bin=$PWD/target/release/ocpipe
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 benches/gen_traces.py "$work/in" "$n"
bytes=$(cat "$work"/in/*.jsonl | wc -c)
cat > "$work/pipeline.toml" <<TOML
[sources.traces]
type = "trace_jsonl"
path = "$work/in"
follow = false
[transforms.redacted]
type = "redact"
inputs = ["traces"]
[sinks.out]
type = "jsonl"
inputs = ["redacted"]
path = "$work/out/{sessionID}.jsonl"
TOML
jq_filter='.headers |= (if . == null then . else with_entries(if ((.key | ascii_downcase) as $k | ["authorization","proxy-authorization","x-api-key","api-key","cookie","set-cookie"] | index($k)) then .value = "[REDACTED]" else . end) end)'
hyperfine --warmup 1 --runs "${RUNS:-5}" --export-json "$work/result.json" \
  --prepare "rm -rf $work/out $work/state" --prepare "rm -f $work/jq.out" \
  -n ocpipe "taskset -c 0 env OCPIPE_DATA_DIR=$work/state $bin --log-level warn run $work/pipeline.toml" \
  -n jq "taskset -c 0 sh -c 'cat $work/in/*.jsonl | jq -c \"\$0\" > $work/jq.out' '$jq_filter'"
# Same records out, and no key left in either output.
in_lines=$(cat "$work"/in/*.jsonl | wc -l)
out_lines=$(cat "$work"/out/*.jsonl | wc -l)
[ "$in_lines" = "$out_lines" ] || { echo "ocpipe wrote $out_lines of $in_lines records" >&2; exit 1; }
! grep -q sk-bench "$work"/out/*.jsonl || { echo "a key survived in ocpipe's output" >&2; exit 1; }
! grep -q sk-bench "$work/jq.out" || { echo "a key survived in jq's output" >&2; exit 1; }
python3 - "$work/result.json" "$bytes" <<'PY'
import json, sys
res = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
mb = int(sys.argv[2]) / 1e6
o, j = res["ocpipe"]["median"], res["jq"]["median"]
print(f"\ninput: {mb:.1f} MB")
print(f"ocpipe (trace_jsonl -> redact -> jsonl, 1 core): {mb / o:8.1f} MB/s  (median {o:.3f} s)")
print(f"jq     (header redaction only, 1 core):          {mb / j:8.1f} MB/s  (median {j:.3f} s)")
print(f"ratio ocpipe/jq: {j / o:.1f}x   target: >= 200 MB/s -> {'met' if mb / o >= 200 else 'NOT met'}")
PY
