#!/usr/bin/env bash
# run.sh: the issue-4 benchmark matrix, sidecar beside a direct rabbitmq-c client.
#
#   tests/bench/run.sh [--quick|--key|--full|--churn|--streams|--batch] [--daemon PATH] [--bench PATH]
#                      [--out DIR]
#
#   --quick  smoke: every scenario once, small (seconds; the ctest bench-smoke)
#   --key    the rows issue 4 sets targets for, each run 3 times (median kept), ~10 min
#   --full   the whole matrix once, ~15 min
#   --churn  issue 11: delivery latency of 10 streams while 100 other streams
#            open and close per second, 3 runs, ~1 min
#   --streams 1,000 Subscribe streams on one daemon (10 connections) sharing
#            1,000 msg/s, beside 1,000 direct channels: peak RSS, 3 runs, ~1 min
#   --batch  issue 15, 3 runs, ~8 min: publish with confirms (quorum, 256 B)
#            direct beside the sidecar's PublishStream and PublishBatchStream
#            (batch 1/16/64) at window 64 and 512, 1/10/100 unary Publish
#            callers and 100 callers sharing the C++ library's Publisher;
#            consume with acks through SubscribeBatch (batch 1, 64,
#            256) beside Subscribe and direct, end to end at 1,000 and 10,000
#            msg/s, and the bare gRPC round trip
#
# Starts a RabbitMQ node when none answers (deploy/scripts/broker.sh ensure) and
# its own mq-sidecar on a private config (exchanges/queues named bench.<pid>.*,
# deleted at the end), runs the matrix with mqs_bench, and prints one table with
# the sidecar/direct ratio per row. Writes DIR/results.jsonl (raw rows),
# DIR/table.md, DIR/table.csv and, when gnuplot is present (--key/--full install it),
# DIR/benchmarks-throughput.png and DIR/benchmarks-latency.png.
# Without --daemon/--bench it builds both into build/bench (RelWithDebInfo).
# Exits non-zero on errors (failed publishes, lost messages, timeouts), never on speed.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
MODE=quick
DAEMON="" BENCH="" OUT=""
while (($#)); do
  case "$1" in
    --quick) MODE=quick ;;
    --full) MODE=full ;;
    --key) MODE=key ;;
    --churn) MODE=churn ;;
    --batch) MODE=batch ;;
    --streams) MODE=streams ;;
    --daemon) DAEMON="$2"; shift ;;
    --bench) BENCH="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 64 ;;
  esac
  shift
done
OUT="${OUT:-$ROOT/build/bench-results/$MODE}"
if [[ -z "$DAEMON" || -z "$BENCH" ]]; then
  cmake -S "$ROOT" -B "$ROOT/build/bench" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  ninja -C "$ROOT/build/bench" mq-sidecar mqs_bench
  DAEMON="${DAEMON:-$ROOT/build/bench/daemon/mq-sidecar}"
  BENCH="${BENCH:-$ROOT/build/bench/tests/bench/mqs_bench}"
fi
mkdir -p "$OUT"
rm -f "$OUT/results.jsonl"

"$ROOT/deploy/scripts/broker.sh" ensure >&2
AMQP_URI="${MQS_BENCH_AMQP_URI:-amqp://guest:guest@127.0.0.1:5672/}"

# A private daemon: unique names, a unix socket in a temp dir, a free TCP port.
PFX="bench.$$"
WORK="$(mktemp -d /tmp/mqs-bench.XXXXXX)"
PORT=$((50100 + $$ % 800))
while timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT" 2>/dev/null; do PORT=$((PORT + 1)); done
cat >"$WORK/mq-sidecar.yaml" <<EOF
listen: ["unix://$WORK/sock", "127.0.0.1:$PORT"]
tcp: { insecure: true }
broker: { uris: ["$AMQP_URI"], heartbeat: 30s }
producers:
  $PFX.classic: { exchange: $PFX.classic }
  $PFX.quorum: { exchange: $PFX.quorum }
consumers:
  $PFX.classic:
    { exchange: $PFX.classic, queue: $PFX.classic.queue, queue_type: classic, prefetch: 64,
      dead_letter: false }
  $PFX.quorum:
    { exchange: $PFX.quorum, queue: $PFX.quorum.queue, queue_type: quorum, prefetch: 64,
      dead_letter: false }
publish: { window: 1024 }
log: { level: warn }
metrics: { listen: "" }
EOF
start_daemon() {
  "$DAEMON" --config "$WORK/mq-sidecar.yaml" >>"$WORK/daemon.log" 2>&1 &
  DAEMON_PID=$!
  # Connected and topology declared (a slow start, e.g. under ASan, must not
  # make the first direct row find no queue); fails after --timeout.
  "$BENCH" --mode sidecar --scenario ready --target "unix://$WORK/sock" --timeout 60 >&2
}
DAEMON_PID=""
cleanup() {
  local rc=$?
  kill -TERM "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null || true
  "$BENCH" --scenario cleanup --amqp-uri "$AMQP_URI" \
    --queue "$PFX.classic.queue,$PFX.quorum.queue" --exchange "$PFX.classic,$PFX.quorum" \
    >/dev/null 2>&1 || echo "run.sh: cleanup of $PFX.* failed" >&2
  if ((rc != 0)); then
    echo "run.sh: failed (exit $rc); daemon log:" >&2
    tail -n 20 "$WORK/daemon.log" >&2 || true
  fi
  # Kept with the results: a slow row can be explained afterwards.
  cp "$WORK/daemon.log" "$OUT/daemon.log" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
start_daemon

FAILED_ROWS=()
# bench QUEUE_TYPE MODE [args...]: one mqs_bench run; MODE direct|unix|tcp.
bench() {
  local qt="$1" via="$2"; shift 2
  local mode=(--mode direct)
  case "$via" in
    unix) mode=(--mode sidecar --transport unix --target "unix://$WORK/sock") ;;
    tcp) mode=(--mode sidecar --transport tcp --target "127.0.0.1:$PORT") ;;
  esac
  local attempt
  for attempt in 1 2; do
    echo "== $qt $via $*" >&2
    # The broker's Erlang VM, to report its CPU too (measurement only).
    BROKER_PID="$(pgrep -o beam.smp || echo 0)"
    if "$BENCH" "${mode[@]}" --amqp-uri "$AMQP_URI" --business "$PFX.$qt" \
      --exchange "$PFX.$qt" --queue "$PFX.$qt.queue" --queue-type "$qt" \
      --daemon-pid "$DAEMON_PID" --broker-pid "$BROKER_PID" --json "$OUT/results.jsonl" \
      "$@" >/dev/null; then
      return 0
    fi
    # The full run takes minutes on a broker others may restart: retry a
    # failed row once. The smoke run reports every error.
    if [[ $MODE == quick ]]; then return 1; fi
    if [[ $attempt == 2 ]]; then
      # A long run goes on past one bad row; the table's notes list it.
      echo "run.sh: the row failed twice; going on: $qt $via $*" >&2
      FAILED_ROWS+=("$qt $via $*")
      return 0
    fi
    echo "run.sh: the row failed; retrying it once" >&2
    # Another test may have stopped the broker on purpose: give it a minute to
    # come back before starting one ourselves.
    for ((i = 0; i < 60; i++)); do
      "$ROOT/deploy/scripts/broker.sh" status && break
      sleep 1
    done
    "$ROOT/deploy/scripts/broker.sh" ensure >&2
    # Something on a shared machine may have stopped our daemon: start another.
    if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
      echo "run.sh: the daemon (pid $DAEMON_PID) is gone; starting it again" >&2
      start_daemon
    fi
  done
}
# each QUEUE_TYPE [args...]: direct, then the sidecar over each transport in $VIAS.
each() {
  local qt="$1"; shift
  bench "$qt" direct "$@"
  for via in $VIAS; do bench "$qt" "$via" "$@"; done
}

if [[ $MODE == churn ]]; then
  # 10 streams share 1,000 msg/s on the classic queue; meanwhile streams on
  # the quorum business open and close, 100 a second, each open 0.5 s.
  for run in 1 2 3; do
    bench classic unix --scenario churn --consumers 10 --rate 1000 --window 64 --prefetch 64 \
      --size 256 --duration 10 --churn-business "$PFX.quorum" --churn-rate 100 --churn-life 0.5
  done
elif [[ $MODE == streams ]]; then
  VIAS="unix"
  for run in 1 2 3; do
    each classic --scenario streams --consumers 1000 --rate 1000 --window 64 --prefetch 1 \
      --size 256 --duration 8
  done
elif [[ $MODE == batch ]]; then
  # Interleaved repetitions, as --key: a burst of other load hits one run.
  # Publish rows (PublishBatchStream, --batch N messages per request; 0:
  # PublishStream), then the consume rows.
  # Consume rows: SubscribeBatch (--batch N: max_batch_messages N, acks listed in one
  # request) beside Subscribe (batch 0) and direct, interleaved as --key is;
  # the second run goes in the other order, so no variant always follows
  # the same one.
  for run in 1 2 3; do
    for win in 64 512; do
      bench quorum direct --scenario publish --window "$win" --size 256 --duration 4 \
        --count 10000000
      for b in 0 1 16 64; do
        bench quorum unix --scenario publish --window "$win" --batch "$b" --size 256 \
          --duration 4 --count 10000000
      done
    done
    for callers in 1 10 100; do
      bench quorum unix --scenario unary --callers "$callers" --size 256 --duration 4 \
        --count 10000000
    done
    # The same 100 callers sharing one Publisher of the C++ client library.
    bench quorum unix --scenario library --callers 100 --window 256 --size 256 --duration 4 \
      --count 10000000
    BATCHES="0 1 64 256" E2E_BATCHES="0 256"
    if ((run == 2)); then BATCHES="256 64 1 0" E2E_BATCHES="256 0"; fi
    for pf in 64 512; do
      bench classic direct --scenario consume --prefetch "$pf" --size 256 --count 20000 --duration 8
      for b in $BATCHES; do
        bench classic unix --scenario consume --prefetch "$pf" --size 256 --count 20000 \
          --duration 8 --batch "$b"
      done
    done
    for rate in 1000 10000; do
      bench classic direct --scenario e2e --rate "$rate" --window 64 --prefetch 64 --size 256 \
        --duration 4
      for b in $E2E_BATCHES; do
        bench classic unix --scenario e2e --rate "$rate" --window 64 --prefetch 64 --size 256 \
          --duration 4 --batch "$b"
      done
    done
    bench classic unix --scenario rtt --rate 1000 --duration 4
  done
elif [[ $MODE == quick ]]; then
  # Smoke: every scenario once, small, seconds in all.
  VIAS="unix"
  each classic --scenario publish --window 64 --size 256 --duration 1 --count 2000
  bench classic unix --scenario publish --window 64 --batch 16 --size 256 --duration 1 \
    --count 2000
  bench classic direct --scenario ceiling --window 64 --size 256 --duration 1 --count 2000
  each classic --scenario consume --prefetch 64 --size 256 --count 1000
  each classic --scenario consume --prefetch 64 --size 256 --count 1000 --ack-multiple
  bench classic unix --scenario consume --prefetch 64 --size 256 --count 1000 --batch 64
  each classic --scenario competing --consumers 2 --prefetch 64 --size 256 --count 1000
  each classic --scenario e2e --rate 1000 --window 64 --prefetch 64 --size 256 --duration 1
  bench classic unix --scenario rtt --rate 1000 --duration 0.5
  bench classic unix --scenario library --callers 8 --window 64 --size 256 --duration 1 \
    --count 2000
  each classic --scenario streams --consumers 20 --rate 500 --window 64 --prefetch 1 \
    --size 256 --duration 1
  VIAS="tcp"
  each quorum --scenario publish --window 64 --size 256 --duration 1 --count 2000
elif [[ $MODE == key ]]; then
  # The rows the targets of issue 4 name, three times each, interleaved so
  # that a burst of other load hits one repetition, not one mode.
  VIAS="unix"
  for rep in 1 2 3; do
    for qt in classic quorum; do
      each "$qt" --scenario publish --window 64 --size 256 --duration 4 --count 10000000
      each "$qt" --scenario publish --window 512 --size 256 --duration 4 --count 10000000
      each "$qt" --scenario consume --prefetch 64 --size 256 --count 20000 --duration 8
      each "$qt" --scenario consume --prefetch 512 --size 256 --count 20000 --duration 8
    done
    each classic --scenario e2e --rate 1000 --window 64 --prefetch 64 --size 256 --duration 8
    each classic --scenario e2e --rate 10000 --window 64 --prefetch 64 --size 256 --duration 4
    # The gRPC round trip alone (no AMQP): the floor under e2e's added latency.
    bench classic unix --scenario rtt --rate 1000 --duration 4
  done
  each classic --scenario streams --consumers 1000 --rate 1000 --window 64 --prefetch 1 \
    --size 256 --duration 8
else
  D="${MQS_BENCH_SECONDS:-4}"      # seconds per publish row
  N="${MQS_BENCH_MESSAGES:-20000}" # messages per consume row
  for qt in classic quorum; do
    for win in 1 64 512; do
      for size in 16 256 4096; do
        # TCP beside the unix socket for one representative row.
        VIAS="unix"
        [[ $win == 64 && $size == 256 ]] && VIAS="unix tcp"
        each "$qt" --scenario publish --window "$win" --size "$size" --duration "$D" \
          --count 10000000
      done
    done
    VIAS="unix"
    for size in 16 256 4096; do
      bench "$qt" direct --scenario ceiling --window 512 --size "$size" --duration "$D" \
        --count 10000000
    done
    for pf in 1 64 512; do
      each "$qt" --scenario consume --prefetch "$pf" --size 256 --count "$N" --duration "$((D * 2))"
    done
    # Acks coalesced with `multiple` (both modes): what is pending at once goes as one.
    for pf in 64 512; do
      each "$qt" --scenario consume --prefetch "$pf" --size 256 --count "$N" --duration "$((D * 2))" \
        --ack-multiple
    done
    for c in 1 2 3 6; do
      each "$qt" --scenario competing --consumers "$c" --prefetch 64 --size 256 --count "$N" \
        --duration "$((D * 2))"
    done
    VIAS="unix tcp"
    for rate in 1000 10000; do
      each "$qt" --scenario e2e --rate "$rate" --window 64 --prefetch 64 --size 256 \
        --duration "$((D * 2))"
    done
  done
  VIAS="unix"
  # 1,000 Subscribe streams (AMQP channels in direct mode) on one daemon.
  each classic --scenario streams --consumers 1000 --rate 1000 --window 64 --prefetch 1 \
    --size 256 --duration "$((D * 2))"
  # The gRPC round trip alone (no AMQP): the floor under e2e's added latency.
  bench classic unix --scenario rtt --rate 1000 --duration "$D"
fi

"$BENCH" --report "$OUT/results.jsonl" --md "$OUT/table.md" --csv "$OUT/table.csv" \
  --plot-dir "$OUT"
if ((${#FAILED_ROWS[@]})); then
  {
    echo
    echo "Rows that failed twice and are missing above:"
    for row in "${FAILED_ROWS[@]}"; do echo "- \`$row\`"; done
  } | tee -a "$OUT/table.md" >&2
fi

# The chart: gnuplot from Debian (the full run installs it when missing).
if ! command -v gnuplot >/dev/null && [[ $MODE != quick ]]; then
  apt-get install -y gnuplot-nox >/dev/null 2>&1 || echo "run.sh: could not install gnuplot" >&2
fi
if command -v gnuplot >/dev/null && [[ -s "$OUT/throughput.dat" ]]; then
  gnuplot -e "dir='$OUT'" "$ROOT/tests/bench/plot.gnuplot" ||
    echo "run.sh: gnuplot failed; the table is still in $OUT" >&2
fi
{
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
    "$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) RAM," \
    "load before the report: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "results: $OUT (results.jsonl, table.md, table.csv)"
} >&2
