#!/usr/bin/env bash
# The seed's transfer flow on one machine, without Docker: otc publishes
# approved USDT transfers through its sidecar, three usdtsvr workers, each
# beside its own sidecar, compete for them on one durable queue, and every
# transfer is executed exactly once. Midway one worker and its sidecar are
# SIGKILLed: the transfers they held go back to the queue and finish on the
# others; a transfer the killed worker had executed but not acked comes again
# and is skipped by the shared ledger (workers deduplicate by message_id, as
# docs/reliability.md tells users to).
#
#   deploy/demo/run.sh [--count 1000] [--build-dir DIR] [--no-view]
#
# Installs and builds what is missing (build/release), starts a local
# RabbitMQ when none answers. Exit 0 when every transfer was confirmed and
# executed exactly once.
set -euo pipefail
cd "$(dirname "$0")/../.."
COUNT=1000
BUILD=""
VIEW=1
while (($#)); do
  case "$1" in
    --count) COUNT=$2; shift 2 ;;
    --build-dir) BUILD=$2; shift 2 ;;
    --no-view) VIEW=0; shift ;;
    *) echo "usage: deploy/demo/run.sh [--count N] [--build-dir DIR] [--no-view]" >&2; exit 64 ;;
  esac
done
[[ "$COUNT" =~ ^[0-9]+$ && "$COUNT" -ge 10 ]] || { echo "demo: --count must be >= 10" >&2; exit 64; }
if [[ -z "$BUILD" ]]; then
  deploy/scripts/install-deps.sh
  BUILD=build/release
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMQS_BUILD_TESTS=OFF >/dev/null
  ninja -C "$BUILD" mq-sidecar mqctl otc_producer usdtsvr_worker
fi
deploy/scripts/broker.sh ensure >/dev/null
SIDECAR=$BUILD/daemon/mq-sidecar
MQCTL=$BUILD/client/mqctl
PRODUCER=$BUILD/client/otc_producer
WORKER=$BUILD/client/usdtsvr_worker
URI=${MQS_TEST_AMQP_URI:-amqp://guest:guest@127.0.0.1:5672/}
BUSINESS=${MQS_DEMO_BUSINESS:-usdt.transfer}

DIR=$(mktemp -d /tmp/mqs-demo.XXXXXX)
RUN=$(basename "$DIR" | cut -d. -f2)  # this run's transfer ids start with it
LEDGER=$DIR/ledger
mkdir -p "$LEDGER"
PIDS=()
declare -A SIDECAR_PID WORKER_PID
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# One sidecar per service, each with its own socket; no metrics port (four
# sidecars on one host would need four).
sidecar() {  # NAME ROLE
  local name=$1 role=$2
  {
    echo "listen: [\"unix://$DIR/$name.sock\"]"
    echo "broker: { uris: [\"$URI\"], heartbeat: 10s }"
    if [[ $role == producer ]]; then
      echo "producers: { $BUSINESS: { exchange: $BUSINESS } }"
      echo "consumers: {}"
    else
      echo "producers: {}"
      echo "consumers: { $BUSINESS: { exchange: $BUSINESS, prefetch: 16 } }"
    fi
    echo "shutdown: { drain: 2s }"
    echo "metrics: { listen: \"\" }"
  } >"$DIR/$name.yaml"
  "$SIDECAR" --config "$DIR/$name.yaml" >"$DIR/$name.sidecar.log" 2>&1 &
  PIDS+=($!)
  SIDECAR_PID[$name]=$!
}
wait_serving() {  # NAME
  for _ in $(seq 1 100); do
    if "$MQCTL" --address "unix://$DIR/$1.sock" --timeout 1s health >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "demo: sidecar $1 is not SERVING; its log:" >&2
  tail -20 "$DIR/$1.sidecar.log" >&2
  exit 1
}

echo "demo: run $RUN in $DIR; $COUNT transfers; broker $URI"
sidecar otc producer
for w in 1 2 3; do sidecar "usdtsvr-$w" consumer; done
for name in otc usdtsvr-1 usdtsvr-2 usdtsvr-3; do wait_serving "$name"; done
for w in 1 2 3; do
  "$WORKER" --target "unix://$DIR/usdtsvr-$w.sock" --business "$BUSINESS" --threads 4 \
    --ledger-dir "$LEDGER" --name "usdtsvr-$w" --work-ms 40 >"$DIR/usdtsvr-$w.out" 2>"$DIR/usdtsvr-$w.err" &
  PIDS+=($!)
  WORKER_PID[$w]=$!
done
"$PRODUCER" --target "unix://$DIR/otc.sock" --business "$BUSINESS" --count "$COUNT" \
  --prefix "$RUN-" >"$DIR/otc.out" 2>"$DIR/otc.err" &
PRODUCER_PID=$!

count() { grep -c -- "$2 $RUN-" "$1" 2>/dev/null || true; }
executed_total() { find "$LEDGER" -name "$RUN-*" | wc -l; }
view() {
  local line="executed:"
  for w in 1 2 3; do line+=" usdtsvr-$w $(count "$DIR/usdtsvr-$w.out" executed)"; done
  line+=" | total $(executed_total)/$COUNT | duplicates skipped"
  line+=" $(cat "$DIR"/usdtsvr-*.out | grep -c -- "duplicate $RUN-" || true)"
  line+=" | redelivered $(cat "$DIR"/usdtsvr-*.out | grep -c -- "^executed $RUN-.*(redelivered)" || true)"
  line+=" | retries $(cat "$DIR"/usdtsvr-*.err | grep -c -- "^$RUN-.*retrying" || true)"
  line+="${1:-}"
  if ((VIEW)) && [[ -t 1 ]]; then printf '\r\033[K%s' "$line"; else echo "$line"; fi
}

killed=0
killed_at=0
deadline=$((SECONDS + 120 + COUNT / 20))
last_view=0
while (($(executed_total) < COUNT)); do
  if ((SECONDS > deadline)); then
    view
    echo
    echo "demo: FAILED: $(executed_total) of $COUNT executed by the deadline; logs in $DIR" >&2
    exit 1
  fi
  if ((!killed && $(executed_total) >= COUNT / 2)); then
    kill -KILL "${WORKER_PID[2]}" "${SIDECAR_PID[usdtsvr-2]}" 2>/dev/null || true
    wait "${WORKER_PID[2]}" "${SIDECAR_PID[usdtsvr-2]}" 2>/dev/null || true  # reaped quietly
    killed=1
    killed_at=$(executed_total)
    view " | usdtsvr-2 and its sidecar SIGKILLed"
    echo
  fi
  if ((SECONDS != last_view)) || ! ((VIEW)); then
    ((VIEW)) && view
    last_view=$SECONDS
  fi
  sleep 0.05
done
wait "$PRODUCER_PID" || { echo; echo "demo: otc_producer failed: $(tail -3 "$DIR/otc.err")" >&2; exit 1; }
view
echo
# The last transfers are acked; then the workers and sidecars stop (drain).
cleanup
trap - EXIT

executed=$(cat "$DIR"/usdtsvr-*.out | grep -c -- "^executed $RUN-" || true)
distinct=$(cat "$DIR"/usdtsvr-*.out | grep -- "^executed $RUN-" | awk '{print $2}' | sort -u | wc -l)
confirmed=$(grep -o '^confirmed [0-9]*' "$DIR/otc.out" | awk '{print $2}')
skipped=$(cat "$DIR"/usdtsvr-*.out | grep -c -- "^duplicate $RUN-" || true)
echo "demo: $COUNT transfers published by otc, ${confirmed:-?} confirmed by the broker"
for w in 1 2 3; do
  note=""; [[ $w == 2 ]] && note=" (SIGKILLed with its sidecar midway)"
  echo "demo:   usdtsvr-$w executed $(count "$DIR/usdtsvr-$w.out" executed)$note"
done
redelivered=$(cat "$DIR"/usdtsvr-*.out | grep -c -- "^executed $RUN-.*(redelivered)" || true)
echo "demo: $executed executions of $distinct distinct transfers ($redelivered of them on a redelivered copy:"
echo "demo:   a retry, or what the killed worker held); $skipped copies of executed transfers skipped by the ledger"
echo "demo: usdtsvr-2 and its sidecar were killed after $killed_at of $COUNT executions"
if ((!killed || killed_at >= COUNT)); then
  echo "demo: FAILED: the kill did not land mid-flow; logs in $DIR" >&2
  exit 1
fi
if [[ ${confirmed:-0} -eq $COUNT && $executed -eq $COUNT && $distinct -eq $COUNT &&
      $(executed_total) -eq $COUNT ]]; then
  echo "demo: OK: $COUNT of $COUNT executed exactly once by transfer id"
  rm -rf "$DIR"
  exit 0
fi
echo "demo: FAILED: expected $COUNT executions of $COUNT transfers; logs in $DIR" >&2
exit 1
