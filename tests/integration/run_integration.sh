#!/bin/sh
# Builds and runs the integration tests against a local RabbitMQ, starting one
# (rabbitmq-server -detached, as root) if none answers.
#
#   tests/integration/run_integration.sh [BUILD_DIR] [ctest args...]
#
# MQS_TEST_AMQP_URI selects another broker (then none is started).
set -eu
src=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-/tmp/build-it}
[ $# -gt 0 ] && shift

if [ -z "${MQS_TEST_AMQP_URI:-}" ]; then
  if ! rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
    echo "starting rabbitmq-server" >&2
    rabbitmq-server -detached
    i=0
    until rabbitmq-diagnostics -q ping >/dev/null 2>&1; do
      i=$((i + 1))
      [ $i -gt 60 ] && { echo "rabbitmq-server did not start" >&2; exit 1; }
      sleep 1
    done
  fi
fi

cmake -S "$src" -B "$build" -G Ninja -DMQS_WERROR=ON >/dev/null
ninja -C "$build" integration_tests
cd "$build" && ctest -L integration --output-on-failure "$@"
