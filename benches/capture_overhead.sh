#!/usr/bin/env bash
# The capture supervisor's overhead: wall time of `ocpipe capture` (poll every 1 s) against a
# plain `docker run` of the same OpenCode command in the same image, alternating, and ocpipe's
# own CPU while it supervises. `capture_s` is the supervision alone (export_session = false);
# `+export_s` adds `opencode export` of the session, which starts a second container.
#
#   DOCKER_HOST=unix:///path/docker.sock benches/capture_overhead.sh      # RUNS=5 by default
#
# Needs a Docker engine, busybox-static, npm and python3 (the image is fixtures/tools/capture-image.sh;
# OpenCode answers from the scripted mock LLM on the host, `--network host`). Target: <= 5 %.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${OCPIPE_BIN:-$root/target/release/ocpipe}
runs=${RUNS:-5}
image=$("$root/fixtures/tools/capture-image.sh")
tmp=$(mktemp -d /tmp/ocpipe-capture-bench.XXXXXX)
trap 'kill $mock 2>/dev/null || true; rm -rf "$tmp"' EXIT
echo '[]' > "$tmp/script.json"   # every answer: plain text "done"
python3 "$root/fixtures/tools/mock_llm.py" --script "$tmp/script.json" --port-file "$tmp/port" >/dev/null 2>&1 & mock=$!
for _ in $(seq 50); do [ -s "$tmp/port" ] && break; sleep 0.1; done
port=$(cat "$tmp/port")
mkdir -p "$tmp/config" "$tmp/project/tasks" "$tmp/project/pipelines"
cat > "$tmp/config/opencode.json" <<JSON
{"autoupdate": false, "share": "disabled", "model": "mock/mock-1", "small_model": "mock/mock-1",
 "provider": {"mock": {"npm": "@ai-sdk/openai-compatible", "name": "Mock",
   "options": {"baseURL": "http://127.0.0.1:$port/v1", "apiKey": "sk-test"}, "models": {"mock-1": {"name": "Mock 1"}}}}}
JSON
printf 'def add(a, b):\n    return a - b\n' > "$tmp/project/math_utils.py"
echo '[{"id": "bench", "risk_level": "safe", "title": "Bench", "prompt": "Say done"}]' > "$tmp/project/tasks/issues.json"
cat > "$tmp/project/pipelines/capture.toml" <<TOML
data_dir = "$tmp/state"
[sources.capture]
type = "docker_capture"
image_ref = "$image"
network = "host"
opencode_config = "$tmp/config"
env = { OPENCODE_DISABLE_MODELS_FETCH = "1" }
poll_ms = 1000
plugin = false
[sinks.files]
type = "capture_dir"
inputs = ["capture"]
[sinks.report]
type = "html_report"
inputs = ["capture"]
TOML
sed 's/^plugin = false$/plugin = false\nexport_session = false/' "$tmp/project/pipelines/capture.toml" > "$tmp/project/pipelines/no-export.toml"
now() { date +%s.%N; }
plain() {
  local ws cfg; ws=$(mktemp -d "$tmp/ws.XXXX"); cfg=$(mktemp -d "$tmp/cfg.XXXX")
  cp -r "$tmp/project/." "$ws/"; cp "$tmp/config/opencode.json" "$cfg/"
  docker run --rm --network host -e OPENCODE_DISABLE_MODELS_FETCH=1 -e HOME=/root -v "$ws:/workspace" \
    -v "$cfg:/root/.config/opencode" -m 2048m --cpus 2 -w /workspace "$image" opencode run --print-logs "Say done" >/dev/null 2>&1
}
captured() { (cd "$tmp/project" && /usr/bin/time -f "%U %S" -o "$tmp/cpu" "$bin" capture --issue bench --pipeline "pipelines/$1.toml" >/dev/null 2>&1); }
plain; captured no-export; captured capture   # warm once (image layers, page cache)
p_sum=0 c_sum=0 e_sum=0 cpu_sum=0
printf '%-4s %9s %10s %8s %10s %8s %11s\n' run plain_s capture_s ratio +export_s ratio ocpipe_cpu%
for i in $(seq "$runs"); do
  t0=$(now); plain; t1=$(now); captured no-export; t2=$(now)
  cpu=$(awk '{print $1 + $2}' "$tmp/cpu"); captured capture; t3=$(now)
  p=$(echo "$t1 - $t0" | bc -l); c=$(echo "$t2 - $t1" | bc -l); e=$(echo "$t3 - $t2" | bc -l)
  pct=$(echo "100 * $cpu / $c" | bc -l)
  printf '%-4s %9.2f %10.2f %8.3f %10.2f %8.3f %11.2f\n' "$i" "$p" "$c" "$(echo "$c / $p" | bc -l)" "$e" "$(echo "$e / $p" | bc -l)" "$pct"
  p_sum=$(echo "$p_sum + $p" | bc -l); c_sum=$(echo "$c_sum + $c" | bc -l); e_sum=$(echo "$e_sum + $e" | bc -l)
  cpu_sum=$(echo "$cpu_sum + $pct" | bc -l)
done
printf 'mean %9.2f %10.2f %8.3f %10.2f %8.3f %11.2f   (ratios to plain; ocpipe CPU in %% of one core)\n' \
  "$(echo "$p_sum / $runs" | bc -l)" "$(echo "$c_sum / $runs" | bc -l)" "$(echo "$c_sum / $p_sum" | bc -l)" \
  "$(echo "$e_sum / $runs" | bc -l)" "$(echo "$e_sum / $p_sum" | bc -l)" "$(echo "$cpu_sum / $runs" | bc -l)"
