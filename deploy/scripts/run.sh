#!/usr/bin/env bash
# run.sh: install what is missing, build, start a local RabbitMQ when none
# answers, and run mq-sidecar in the foreground on the default config.
#   deploy/scripts/run.sh [--config FILE] [other mq-sidecar flags]
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/scripts/install-deps.sh
cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMQS_BUILD_TESTS=OFF >/dev/null
ninja -C build/release mq-sidecar mqctl
deploy/scripts/broker.sh ensure
args=("$@")
if [[ " ${args[*]} " != *" --config "* && " ${args[*]} " != *" -c "* ]]; then
  args=(--config deploy/config/mq-sidecar.yaml "${args[@]}")
fi
echo "run: mq-sidecar ${args[*]}   (mqctl is at build/release/client/mqctl)"
exec build/release/daemon/mq-sidecar "${args[@]}"
