#!/usr/bin/env bash
# test.sh: install what is missing, start a local RabbitMQ when none answers,
# then build with warnings as errors and run every test; then build again with
# AddressSanitizer + UndefinedBehaviorSanitizer and run every test again.
#   deploy/scripts/test.sh            both passes
#   MQS_TEST_PASSES=werror test.sh    only the first
set -euo pipefail
cd "$(dirname "$0")/../.."
JOBS="${MQS_JOBS:-$(nproc)}"
PASSES="${MQS_TEST_PASSES:-werror asan}"

deploy/scripts/install-deps.sh
deploy/scripts/broker.sh ensure

run_pass() {
  local name=$1; shift
  local dir="build/$name"
  echo "=== test pass: $name ==="
  local t0=$SECONDS
  cmake -S . -B "$dir" -G Ninja -DMQS_WERROR=ON "$@" >/dev/null
  ninja -C "$dir" -j "$JOBS"
  echo "--- $name: built in $((SECONDS - t0)) s"
  deploy/scripts/broker.sh ensure   # the fault tests stop and start it
  ctest --test-dir "$dir" --output-on-failure --timeout 300
  echo "--- $name: passed in $((SECONDS - t0)) s"
}

for pass in $PASSES; do
  case "$pass" in
    werror) run_pass werror -DCMAKE_BUILD_TYPE=RelWithDebInfo ;;
    asan)
      export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1"
      export LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp:print_suppressions=0"
      export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
      run_pass asan -DCMAKE_BUILD_TYPE=Debug -DMQS_SANITIZE=ON
      ;;
    *) echo "unknown pass $pass" >&2; exit 64 ;;
  esac
done
echo "=== all tests passed ==="
