#!/usr/bin/env bash
# broker.sh: make sure a RabbitMQ node answers on 127.0.0.1:${MQS_BROKER_PORT:-5672}.
#   broker.sh ensure   start a local node (rabbitmq-server -detached) unless one answers
#   broker.sh status   exit 0 when a node answers
# Waits for the AMQP port with a deadline; never waits forever.
set -euo pipefail
PORT="${MQS_BROKER_PORT:-5672}"
DEADLINE_S="${MQS_BROKER_DEADLINE_S:-90}"

answers() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT" 2>/dev/null; }

case "${1:-ensure}" in
  status)
    answers
    ;;
  ensure)
    if answers; then
      echo "broker: a RabbitMQ node answers on 127.0.0.1:$PORT"
      exit 0
    fi
    if ! command -v rabbitmq-server >/dev/null; then
      echo "broker: rabbitmq-server is not installed; run deploy/scripts/install-deps.sh" >&2
      exit 1
    fi
    echo "broker: starting a local RabbitMQ node (rabbitmq-server -detached)"
    # Without the caller's descriptors: started under `flock broker.lock`,
    # the node (and epmd) would otherwise hold the lock for their whole life.
    (
      for fd in $(ls /proc/"$BASHPID"/fd); do
        if ((fd > 2)); then eval "exec $fd>&-"; fi
      done
      # RabbitMQ 3.10 recovers queues before exchanges at boot: a quorum
      # retry queue that expires messages in between cannot forward them
      # and tries again only after this timeout (180 s by default); see
      # docs/operations.md "Broker settings".
      export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="${RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS:-} -rabbit dead_letter_worker_publisher_confirm_timeout 10000"
      exec rabbitmq-server -detached
    )
    for ((i = 0; i < DEADLINE_S * 2; i++)); do
      if answers; then
        echo "broker: up after $((i / 2)) s"
        exit 0
      fi
      sleep 0.5
    done
    echo "broker: no answer on 127.0.0.1:$PORT after ${DEADLINE_S} s; see /var/log/rabbitmq/" >&2
    exit 1
    ;;
  *)
    echo "usage: $0 ensure|status" >&2
    exit 64
    ;;
esac
