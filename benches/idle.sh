#!/usr/bin/env bash
# CPU and memory of ocpipe at rest: every checked-in pipeline (pipelines/*.toml) in three scenarios.
#
#   benches/idle.sh                                   # 60 s measuring window per run
#   IDLE_SECS=10 benches/idle.sh                      # shorter window
#   PIPELINES="monitor" SCENARIOS="empty history" benches/idle.sh
#
# Scenarios (each run gets its own temp HOME/XDG dirs, OCPIPE_DATA_DIR, OCPIPE_OUT, loopback port):
#   empty    no OpenCode data dir, no tracer dir
#   history  a 100k-message opencode.db (benches/gen_opencode_db.py) and, for trace.toml, 1000
#            trace requests (benches/gen_traces.py); measured once the backfill has settled
#   writing  as history, while a real isolated OpenCode (fixtures/tools, mock LLM, tracer plugin)
#            runs `opencode run` prompts in a loop during the window (needs npm or OCPIPE_OPENCODE)
# CPU = (utime+stime) delta / CLK_TCK / window, in % of one core. RSS = VmRSS at the end of the
# window, HWM = VmHWM (peak, backfill included). base = `tail -f /dev/null` measured alongside.
# Targets for the idle main job: <= 1 % of one core, <= 30 MB RSS.
# Env: IDLE_SECS (60), SETTLE_MAX (300 s cap on the backfill wait), OCPIPE_BIN (target/release/ocpipe),
#      OCPIPE_BENCH_CACHE (~/.cache/ocpipe/bench), BENCH_MESSAGES (100000), BENCH_TRACES (1000), KEEP=1.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${OCPIPE_BIN:-$root/target/release/ocpipe}
secs=${IDLE_SECS:-60} settle_max=${SETTLE_MAX:-300}
cache=${OCPIPE_BENCH_CACHE:-$HOME/.cache/ocpipe/bench}
msgs=${BENCH_MESSAGES:-100000} ntraces=${BENCH_TRACES:-1000}
pipelines=${PIPELINES:-monitor trace status-light} scenarios=${SCENARIOS:-empty history writing}
hz=$(getconf CLK_TCK)
tmp=$(mktemp -d /tmp/ocpipe-idle.XXXXXX)

# Kill a process and its descendants (children first found, then the parent).
killtree() {
  local c; for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do killtree "$c"; done
  kill "$1" 2>/dev/null || true
}
stopall() { local p; for p in $(jobs -p); do killtree "$p"; done; wait 2>/dev/null || true; }
cleanup() {
  stopall
  [ -n "${KEEP:-}" ] && echo "kept $tmp" >&2 || rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

nap() { sleep "$1" & wait $!; }                                               # interruptible by the trap
ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }       # utime+stime
kb() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }               # VmRSS / VmHWM
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
counters() { OCPIPE_DATA_DIR=$1 timeout 5 "$bin" top --once 2>/dev/null | grep -oE '"(received|sent)": *[0-9]+' | awk -F: '{s += $2} END {print s + 0}'; }

# Cached inputs, generated once.
mkdir -p "$cache"
db=$cache/opencode-$msgs.db traces=$cache/traces-$ntraces
[[ $scenarios == *history* || $scenarios == *writing* ]] && {
  [ -f "$db" ] || python3 "$root/benches/gen_opencode_db.py" "$db" "$msgs" >&2
  [ -d "$traces" ] || { python3 "$root/benches/gen_traces.py" "$traces.partial" "$ntraces" >&2 && mv "$traces.partial" "$traces"; }
}
if [[ $scenarios == *writing* ]]; then
  OCPIPE_OPENCODE=$("$root/fixtures/tools/opencode-bin.sh") || { echo "no OpenCode: skipping 'writing'" >&2; scenarios=${scenarios/writing/}; }
  export OCPIPE_OPENCODE
  . "$root/fixtures/tools/isolated-opencode.sh"
  echo '[{"text": "OK", "usage": {"prompt": 1234, "completion": 7, "cached": 100}}]' > "$tmp/script.json"
fi

# One run: start ocpipe on pipeline $1 in scenario $2, let it settle, measure the window, print a row.
run() {
  local p=$1 s=$2 d=$tmp/$1-$2 log oc base t0 b0 c0 e0 t1 b1 c1 e1 settled=0 quiet=0 prev=-1 now cpu notes=""
  mkdir -p "$d"/{home,data,config,cache,state,dd,out,work}; log=$d/ocpipe.log
  export HOME=$d/home XDG_DATA_HOME=$d/data XDG_CONFIG_HOME=$d/config XDG_CACHE_HOME=$d/cache XDG_STATE_HOME=$d/state \
    OCPIPE_DATA_DIR=$d/dd OCPIPE_OUT=$d/out OCPIPE_HTTP=127.0.0.1:$(freeport) OPENCODE_API_TRACER_DIR=$d/traces
  if [ "$s" != empty ]; then
    mkdir -p "$d/data/opencode"; cp "$db" "$d/data/opencode/opencode.db"
    [ "$p" = trace ] && cp -r "$traces" "$d/traces"
  fi
  "$bin" --log-level info run "$root/pipelines/$p.toml" >"$log" 2>&1 & oc=$!
  # Settle: the history is read (monitor) and the counters stop moving for 3 samples 2 s apart
  # (or for 1 sample with CPU under 5 %), at most SETTLE_MAX seconds.
  while ((settled < settle_max)); do
    c0=$(ticks "$oc" 2>/dev/null) || break; nap 2; settled=$((settled + 2))
    c1=$(ticks "$oc" 2>/dev/null) || break; now=$(counters "$d/dd")
    if [ "$now" = "$prev" ]; then quiet=$((quiet + 1)); else quiet=0; fi; prev=$now
    [[ $p == monitor && $s != empty ]] && ! grep -q "read OpenCode's history" "$log" && continue
    ((quiet >= 3 || (quiet >= 1 && (c1 - c0) * 100 < 5 * 2 * hz))) && break
  done
  ((settled >= settle_max)) && notes+="settle cap hit; "
  if [ "$s" = writing ]; then   # a real OpenCode writing into the same data dir, in a loop
    isolated_opencode "$d" "$tmp/script.json" "$d/served.jsonl"
    mkdir -p "$XDG_CONFIG_HOME/opencode/plugin"; cp "$root/fixtures/tools/tracer-plugin.js" "$XDG_CONFIG_HOME/opencode/plugin/"
    : >"$d/runs"; (cd "$d/work"; while :; do timeout 120 "$opencode" run "Reply exactly: OK" >/dev/null 2>>"$d/opencode.err"; echo >>"$d/runs"; done) &
  fi
  tail -f /dev/null & base=$!
  t0=$(date +%s.%N); c0=$(ticks "$oc" 2>/dev/null || echo x); b0=$(ticks "$base")
  nap "$secs"
  t1=$(date +%s.%N); c1=$(ticks "$oc" 2>/dev/null || echo x); b1=$(ticks "$base")
  if [ "$c0" = x ] || [ "$c1" = x ]; then
    printf '%-13s %-8s  %s\n' "$p" "$s" "ocpipe exited: $(tail -n 3 "$log" | tr '\n' ' ')"
  else
    [ "$s" = writing ] && notes+="$(wc -l <"$d/runs") opencode runs done; "
    awk -v p="$p" -v s="$s" -v hz="$hz" -v t="$t0 $t1" -v c=$((c1 - c0)) -v b=$((b1 - b0)) -v rss="$(kb "$oc" VmRSS)" \
      -v hwm="$(kb "$oc" VmHWM)" -v brss="$(kb "$base" VmRSS)" -v st="${settled}s" -v n="$notes" 'BEGIN {
        split(t, w, " "); win = w[2] - w[1]; cpu = c / hz / win * 100
        n = ((cpu <= 1 && rss / 1024 <= 30) ? "ok; " : "OVER; ") n; sub(/; $/, "", n)
        printf "%-13s %-8s %7.1f %7.1f %7.1f %7.1f %7.1f %6s  %s\n", p, s, cpu, rss / 1024, hwm / 1024, b / hz / win * 100, brss / 1024, st, n }'
  fi
  stopall
  [ -n "${KEEP:-}" ] || rm -rf "$d"
}

echo "ocpipe idle benchmark: $("$bin" --version), window ${secs}s, CLK_TCK $hz, $(nproc) cores"
echo "targets (monitor, idle): CPU <= 1 % of one core, RSS <= 30 MB; base = tail -f /dev/null alongside"
printf '%-13s %-8s %7s %7s %7s %7s %7s %6s  %s\n' pipeline scenario 'CPU%' 'RSS MB' 'HWM MB' 'base%' 'baseMB' settle notes
for s in $scenarios; do for p in $pipelines; do run "$p" "$s"; done; done
