#!/usr/bin/env bash
# profile.sh: where the daemon's CPU goes per message (callgrind), for docs/benchmarks.md.
#
#   tests/bench/profile.sh --daemon PATH --bench PATH [--out DIR] [--count N] [--perf]
#
# Runs mq-sidecar under valgrind --tool=callgrind, zeroes the counters once it
# is ready, then dumps one profile per phase: a sidecar PublishStream run
# (window 64, 256 B, classic queue) and a Subscribe run (prefetch 64) over
# the same N messages. Prints callgrind_annotate's top functions for each, and
# the instructions per message. Names are bench.<pid>.*, deleted at the end.
# --perf: instead of callgrind, run the daemon natively and use perf (Debian's
# linux-perf) for what callgrind cannot see: kernel time, context switches and
# wakeups per message, during e2e at 1,000 msg/s and an unpaced publish.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DAEMON="" BENCH="" OUT="" COUNT=5000 PERF=0
while (($#)); do
  case "$1" in
    --daemon) DAEMON="$2"; shift ;;
    --bench) BENCH="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --count) COUNT="$2"; shift ;;
    --perf) PERF=1 ;;
    *) echo "profile.sh: unknown argument $1" >&2; exit 64 ;;
  esac
  shift
done
[[ -n "$DAEMON" && -n "$BENCH" ]] || { echo "usage: $0 --daemon PATH --bench PATH" >&2; exit 64; }
OUT="${OUT:-$ROOT/build/bench-results/profile}"
mkdir -p "$OUT"
"$ROOT/deploy/scripts/broker.sh" ensure >&2
PFX="bench.$$"
WORK="$(mktemp -d /tmp/mqs-prof.XXXXXX)"
cat >"$WORK/c.yaml" <<YAML
listen: ["unix://$WORK/sock"]
broker: { uris: ["amqp://guest:guest@127.0.0.1:5672/"], heartbeat: 30s }
producers: { $PFX.classic: { exchange: $PFX.classic } }
consumers:
  $PFX.classic:
    { exchange: $PFX.classic, queue: $PFX.classic.queue, queue_type: classic, prefetch: 64,
      dead_letter: false }
publish: { window: 1024 }
log: { level: warn }
metrics: { listen: "" }
YAML
if ((PERF)); then
  "$DAEMON" --config "$WORK/c.yaml" >"$WORK/daemon.log" 2>&1 &
else
  rm -f "$OUT"/callgrind.out.*
  valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out.%p" \
    "$DAEMON" --config "$WORK/c.yaml" >"$WORK/daemon.log" 2>&1 &
fi
VG_PID=$!
cleanup() {
  kill -TERM "$VG_PID" 2>/dev/null && wait "$VG_PID" 2>/dev/null || true
  "$BENCH" --scenario cleanup --queue "$PFX.classic.queue" --exchange "$PFX.classic" \
    >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
common=(--mode sidecar --target "unix://$WORK/sock" --business "$PFX.classic"
        --exchange "$PFX.classic" --queue "$PFX.classic.queue" --size 256 --timeout 300
        --daemon-pid "$VG_PID")
"$BENCH" "${common[@]}" --scenario publish --count 200 --duration 0 >/dev/null  # warm-up, ready
if ((PERF)); then
  # perf_phase NAME ARGS...: counters and a flat profile of the daemon during one run.
  perf_phase() {
    local name="$1"; shift
    perf stat -e task-clock,context-switches,cpu-migrations -p "$VG_PID" \
      -o "$OUT/perf-stat.$name.txt" &
    local stat_pid=$!
    perf record -q -e cpu-clock -F 2999 -p "$VG_PID" -o "$OUT/perf.$name.data" \
      >/dev/null 2>&1 &
    local rec_pid=$!
    sleep 0.5
    "$BENCH" "${common[@]}" --json "$OUT/perf-rows.jsonl" "$@" >/dev/null
    kill -INT "$stat_pid" "$rec_pid"
    wait "$stat_pid" "$rec_pid" 2>/dev/null || true
    echo "== $name: $(tail -n 1 "$OUT/perf-rows.jsonl" | grep -o '"messages":[0-9]*') messages"
    grep -E "task-clock|context-switches|cpu-migrations|elapsed" "$OUT/perf-stat.$name.txt"
    echo "-- by DSO (kernel vs user)"
    { perf report -i "$OUT/perf.$name.data" --sort dso --stdio 2>/dev/null || true; } |
      grep -v -e '^#' -e '^$' | head -12 || true
    echo "-- top symbols"
    { perf report -i "$OUT/perf.$name.data" --sort sym --stdio 2>/dev/null || true; } |
      grep -v -e '^#' -e '^$' | head -25 || true
  }
  rm -f "$OUT/perf-rows.jsonl"
  perf_phase e2e-1000 --scenario e2e --rate 1000 --window 64 --prefetch 64 --duration 8
  perf_phase publish-w64 --scenario publish --window 64 --count 10000000 --duration 6
  exit 0
fi
callgrind_control -z "$VG_PID" >/dev/null
"$BENCH" "${common[@]}" --scenario publish --window 64 --count "$COUNT" --duration 0 >/dev/null
callgrind_control -d publish "$VG_PID" >/dev/null
# Pre-filling goes straight to the broker; only the Subscribe side crosses the daemon.
"$BENCH" "${common[@]}" --scenario consume --prefetch 64 --count "$COUNT" --duration 0 >/dev/null
callgrind_control -d consume "$VG_PID" >/dev/null
for phase in 1 2; do
  name=(x publish consume)
  f="$(ls "$OUT"/callgrind.out.*."$phase" | head -1)"
  total="$(callgrind_annotate "$f" 2>/dev/null |
    awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')"
  echo "== ${name[$phase]}: $f: $total instructions, $((total / COUNT)) per message"
  # Inclusive costs: what each path costs with everything it calls.
  callgrind_annotate --inclusive=yes --threshold=100 "$f" 2>/dev/null |
    sed -n '/file:function/,$p' | grep -v -E '^-+$' | head -60
done
