#!/usr/bin/env bash
# install-deps.sh: installs every Debian 12 package that mq-sidecar's build,
# tests and runtime need. Skips what is already present; safe to re-run.
set -euo pipefail

PACKAGES=(
  # build
  build-essential cmake ninja-build pkg-config git
  # the TSan pass and the source checks (deploy/scripts/lint.sh)
  clang-14 libclang-rt-14-dev clang-format-14 clang-tidy-14
  librabbitmq-dev libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libspdlog-dev libyaml-cpp-dev nlohmann-json3-dev libcli11-dev libsystemd-dev catch2
  # the metrics endpoint (metrics.listen)
  libcpp-httplib-dev
  # runtime: a local broker for development and tests
  rabbitmq-server
  # tests: other AMQP clients for interop, python gRPC for API checks
  amqp-tools python3-pika python3-grpcio python3-protobuf
  # tests/deploy/verify.sh: units (systemd-analyze), the compose file
  # (docker-compose config; no Docker engine is needed for that)
  systemd docker-compose
)

# Node.js for client/node (issue 16): Debian's nodejs and npm, unless a node
# and an npm are there already (NodeSource's nodejs carries npm and conflicts
# with Debian's npm package).
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  PACKAGES+=(nodejs npm)
fi

# The Node client's dependencies, from its committed lock file: only when
# node_modules is missing or older than the lock (seconds, not every test).
node_client_deps() {
  local dir
  dir="$(cd "$(dirname "$0")/../../client/node" && pwd)"
  if [ ! "$dir/node_modules/.package-lock.json" -nt "$dir/package-lock.json" ]; then
    echo "install-deps: npm ci in client/node"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  node_client_deps
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# The broker's package would start a system-wide node; policy-rc.d keeps
# postinst from starting services (we start our own node when needed).
had_policy=0
if [ -e /usr/sbin/policy-rc.d ]; then had_policy=1; fi
if [ $had_policy -eq 0 ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
fi
trap 'if [ $had_policy -eq 0 ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi' EXIT
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
node_client_deps
