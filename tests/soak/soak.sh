#!/usr/bin/env bash
# soak.sh: N messages through two sidecars with competing consumers while, at
# random every few seconds, the broker is restarted and sidecar B is SIGKILLed
# and restarted (soak_driver kills consumers itself). Then the history checker
# judges it: 0 confirmed lost, every duplicate accounted for (each broker
# restart's window goes to restarts.txt, which the driver declares to the
# checker: RabbitMQ may deliver a message again unmarked after a restart, see
# docs/reliability.md). Reports the RSS
# of the sidecars (start, peak, end). Result: docs/reliability.md, "Soak".
#
#   flock -x -o /work/broker.lock tests/soak/soak.sh [options]
#     --messages N      default 1000000
#     --rate R          publishes/s in total (default: N/120 for N <= 50000, else 0 = unpaced)
#     --fault-min S     seconds between broker/sidecar faults, at least (default 4)
#     --fault-max S     at most (default 10)
#     --node-restart    restart the whole node (rabbitmqctl stop + rabbitmq-server
#                       -detached) instead of the app (stop_app/start_app)
#     --build DIR       default build/werror
#     --out DIR         default /tmp/mqs-soak
#
# It stops and starts the local RabbitMQ node: run it under the exclusive broker
# lock, never beside tests, with `flock -o` (and every process it starts gets
# its descriptors above 2 closed): a node started by `rabbitmq-server -detached`
# would otherwise inherit the lock's descriptor and hold the lock for its whole
# life. Needs root and rabbitmqctl. Not a ctest.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
MESSAGES=1000000
RATE=""
FAULT_MIN=4
FAULT_MAX=10
NODE_RESTART=0
BUILD="$ROOT/build/werror"
OUT=/tmp/mqs-soak
URI="${MQS_TEST_AMQP_URI:-amqp://guest:guest@127.0.0.1:5672/}"
BUSINESS=soak

while (($#)); do
  case "$1" in
    --messages) MESSAGES="$2"; shift 2 ;;
    --rate) RATE="$2"; shift 2 ;;
    --fault-min) FAULT_MIN="$2"; shift 2 ;;
    --fault-max) FAULT_MAX="$2"; shift 2 ;;
    --node-restart) NODE_RESTART=1; shift ;;
    --build) BUILD="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "soak: unknown option $1" >&2; exit 64 ;;
  esac
done
if [[ -z "$RATE" ]]; then
  if ((MESSAGES <= 50000)); then RATE=$((MESSAGES / 120)); else RATE=0; fi
fi

DAEMON="$BUILD/daemon/mq-sidecar"
DRIVER="$BUILD/tests/soak/soak_driver"
for f in "$DAEMON" "$DRIVER"; do
  [[ -x "$f" ]] || { echo "soak: $f missing; ninja -C $BUILD mq-sidecar soak_driver" >&2; exit 1; }
done
command -v rabbitmqctl >/dev/null || { echo "soak: rabbitmqctl not found" >&2; exit 1; }

rm -rf "$OUT"
mkdir -p "$OUT"
log() { echo "soak: $(date -u +%T) $*" | tee -a "$OUT/events.log" >&2; }

# Runs "$@" with every descriptor above 2 closed (see the note on the lock above).
closed_fds() {
  local fd
  for fd in "/proc/$BASHPID/fd"/*; do
    fd=${fd##*/}
    ((fd > 2)) && eval "exec $fd>&-" 2>/dev/null
  done
  exec "$@"
}

answers() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/5672" 2>/dev/null; }
wait_amqp() {
  for ((i = 0; i < 180; i++)); do answers && return 0; sleep 0.5; done
  return 1
}

# A fresh queue: the quorum queue of earlier runs goes (ignore "not found").
rabbitmqctl delete_queue "$BUSINESS.queue" >/dev/null 2>&1 || true
rabbitmqctl delete_queue "$BUSINESS.queue.dead" >/dev/null 2>&1 || true

for s in A B; do
  cat >"$OUT/$s.yaml" <<EOF
listen: ["unix://$OUT/$s.sock"]
broker:
  uris: ["$URI"]
  heartbeat: 2s
  connect_timeout: 5s
producers:
  $BUSINESS: { exchange: $BUSINESS }
consumers:
  $BUSINESS: { exchange: $BUSINESS, queue_type: quorum, prefetch: 50 }
publish: { window: 1024, wait_timeout: 60s }
shutdown: { drain: 1000ms }
log: { level: info }
metrics: { listen: "" }
EOF
done

declare -A PID
start_sidecar() {
  local s="$1"
  rm -f "$OUT/$s.sock"
  (closed_fds "$DAEMON" --config "$OUT/$s.yaml" >>"$OUT/$s.log" 2>&1) &
  PID[$s]=$!
  for ((i = 0; i < 100; i++)); do [[ -S "$OUT/$s.sock" ]] && return 0; sleep 0.1; done
  log "sidecar $s did not listen within 10 s (see $OUT/$s.log)"
  return 1
}
# VmRSS in kB; 0 for a process gone (or a zombie: no VmRSS line).
rss_kb() {
  local v
  v=$(awk '/^VmRSS:/ {print $2}' "/proc/${1:-0}/status" 2>/dev/null || true)
  echo "${v:-0}"
}

BROKER_DOWN=0
DRIVER_PID=""
SAMPLER_PID=""
# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
  set +e
  [[ -n "$SAMPLER_PID" ]] && kill "$SAMPLER_PID" 2>/dev/null
  [[ -n "$DRIVER_PID" ]] && kill "$DRIVER_PID" 2>/dev/null
  if ((BROKER_DOWN)); then
    if ((NODE_RESTART)); then (closed_fds rabbitmq-server -detached >/dev/null 2>&1); else rabbitmqctl start_app >/dev/null 2>&1; fi
    wait_amqp
  fi
  for s in A B; do [[ -n "${PID[$s]:-}" ]] && kill "${PID[$s]}" 2>/dev/null; done
  wait 2>/dev/null
}
trap cleanup EXIT

answers || { echo "soak: no broker on 127.0.0.1:5672" >&2; exit 1; }
start_sidecar A
start_sidecar B
log "sidecars A (pid ${PID[A]}) and B (pid ${PID[B]}) listening; $MESSAGES messages at rate $RATE/s"

echo "${PID[A]}" >"$OUT/A.pid"
echo "${PID[B]}" >"$OUT/B.pid"
# RSS every second: t, pid A, rss A (kB), pid B, rss B (kB). A is never killed.
(
  t0=$(date +%s)
  while true; do
    a=$(cat "$OUT/A.pid" 2>/dev/null); b=$(cat "$OUT/B.pid" 2>/dev/null)
    echo "$(($(date +%s) - t0)) $a $(rss_kb "$a") $b $(rss_kb "$b")"
    sleep 1
  done
) >"$OUT/rss.log" &
SAMPLER_PID=$!

closed_fds "$DRIVER" --sidecar "unix://$OUT/A.sock" --sidecar "unix://$OUT/B.sock" \
  --business "$BUSINESS" --tag "soak$(date +%s)" --messages "$MESSAGES" --rate "$RATE" \
  --restarts "$OUT/restarts.txt" --timeout 7200 >"$OUT/driver.out" 2>"$OUT/driver.err" &
DRIVER_PID=$!

broker_restarts=0
sidecar_kills=0
while kill -0 "$DRIVER_PID" 2>/dev/null; do
  # Sleep a random time in [FAULT_MIN, FAULT_MAX] s, leaving early when the driver ends.
  gap=$((FAULT_MIN * 10 + RANDOM % ((FAULT_MAX - FAULT_MIN) * 10 + 1)))
  for ((i = 0; i < gap; i++)); do kill -0 "$DRIVER_PID" 2>/dev/null || break 2; sleep 0.1; done
  if ((RANDOM % 2)); then
    broker_restarts=$((broker_restarts + 1))
    BROKER_DOWN=1
    echo "begin $(date +%s%N)" >>"$OUT/restarts.txt"
    if ((NODE_RESTART)); then
      log "broker restart #$broker_restarts: rabbitmqctl stop (whole node)"
      rabbitmqctl stop >/dev/null 2>&1 || log "rabbitmqctl stop failed"
      sleep $((1 + RANDOM % 3))
      (closed_fds rabbitmq-server -detached >/dev/null 2>&1)
    else
      log "broker restart #$broker_restarts: rabbitmqctl stop_app"
      rabbitmqctl stop_app >/dev/null 2>&1 || log "rabbitmqctl stop_app failed"
      sleep $((1 + RANDOM % 3))
      rabbitmqctl start_app >/dev/null 2>&1 || log "rabbitmqctl start_app failed"
    fi
    wait_amqp || { log "broker does not answer after the restart"; exit 1; }
    echo "end $(date +%s%N)" >>"$OUT/restarts.txt"
    BROKER_DOWN=0
    log "broker answers again"
  else
    sidecar_kills=$((sidecar_kills + 1))
    log "sidecar B SIGKILL #$sidecar_kills (pid ${PID[B]}, rss $(rss_kb "${PID[B]}") kB)"
    kill -9 "${PID[B]}" 2>/dev/null || true
    wait "${PID[B]}" 2>/dev/null || true
    sleep "0.$((RANDOM % 10))"
    start_sidecar B
    echo "${PID[B]}" >"$OUT/B.pid"
    log "sidecar B restarted (pid ${PID[B]})"
  fi
done
set +e
wait "$DRIVER_PID"
rc=$?
DRIVER_PID=""
set -e
kill "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=""

cat "$OUT/driver.out"
# RSS of A over the whole run; B's last incarnation (B restarts at every kill).
awk -v pidb="${PID[B]}" '
  $3 > 0 { if (!a0) a0 = $3; if ($3 > ap) ap = $3; ae = $3 }
  $4 == pidb && $5 > 0 { if (!b0) b0 = $5; if ($5 > bp) bp = $5; be = $5 }
  $5 > ballp { ballp = $5 }
  END {
    printf "soak: RSS sidecar A (never killed): start %.1f MiB, peak %.1f MiB, end %.1f MiB\n", a0/1024, ap/1024, ae/1024
    printf "soak: RSS sidecar B (last incarnation): start %.1f MiB, peak %.1f MiB, end %.1f MiB; peak over all incarnations %.1f MiB\n", b0/1024, bp/1024, be/1024, ballp/1024
  }' "$OUT/rss.log" | tee "$OUT/rss.txt"
echo "soak: faults: $broker_restarts broker restarts ($([[ $NODE_RESTART == 1 ]] && echo node || echo app)), $sidecar_kills SIGKILLs of sidecar B; events in $OUT/events.log"
rabbitmqctl delete_queue "$BUSINESS.queue" >/dev/null 2>&1 || true
rabbitmqctl delete_queue "$BUSINESS.queue.dead" >/dev/null 2>&1 || true
exit "$rc"
