#!/usr/bin/env bash
# run.sh BUILD_DIR WORK_DIR CXX [LAUNCHER]: installs the client package of
# BUILD_DIR under WORK_DIR/prefix, then configures, builds and runs the
# project beside this script against it (ctest label `package`).
set -euo pipefail
build=$1 work=$2 cxx=$3 launcher=${4:-}
here="$(cd "$(dirname "$0")" && pwd)"
rm -rf "$work"
mkdir -p "$work"
cmake --install "$build" --prefix "$work/prefix" --component mqsidecar-dev >/dev/null
for f in include/mqsidecar/client.h include/mqsidecar/v1/pubsub.pb.h \
         share/mqsidecar/proto/mqsidecar/v1/pubsub.proto \
         lib/cmake/mqsidecar/mqsidecarConfig.cmake lib/cmake/mqsidecar/mqsidecarConfigVersion.cmake; do
  if [ ! -f "$work/prefix/$f" ]; then echo "package: $f not installed" >&2; exit 1; fi
done
args=(-S "$here" -B "$work/build" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix"
      -DCMAKE_CXX_COMPILER="$cxx")
if [ -n "$launcher" ]; then args+=(-DCMAKE_CXX_COMPILER_LAUNCHER="$launcher"); fi
cmake "${args[@]}" >"$work/configure.log" 2>&1 || { cat "$work/configure.log" >&2; exit 1; }
cmake --build "$work/build"
"$work/build/package_main"
