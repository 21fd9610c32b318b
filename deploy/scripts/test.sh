#!/usr/bin/env bash
# test.sh: install what is missing, start a local RabbitMQ when none answers,
# then:
#   lint    clang-format must leave every C++ file as it is;
#   werror  build with warnings as errors (g++), run every test (unit,
#           integration, fault, cluster, tls, bench smoke) and, beside them at
#           the lowest priority, clang-tidy on daemon/ and client/;
#   asan    build with Clang, AddressSanitizer + UndefinedBehaviorSanitizer
#           and run the unit and integration tests (the fault, cluster, amqps
#           and bench tests run in the werror pass, the fault tests also
#           under TSan);
#   tsan    build with Clang, ThreadSanitizer and -Wthread-safety, and run the
#           unit, integration and fault tests but the three slowest
#           (label fault-slow); then clang-tidy on tests/ (it reads this
#           Clang build's precompiled headers, which it cannot from g++);
#   fuzz    build the libFuzzer targets (tests/fuzz), clang-tidy them, and run
#           each for MQS_FUZZ_SECONDS (default 20) from its committed corpus.
#   deploy/scripts/test.sh                   every pass
#   MQS_TEST_PASSES="werror" test.sh         only some
set -euo pipefail
cd "$(dirname "$0")/../.."
JOBS="${MQS_JOBS:-$(nproc)}"
PASSES="${MQS_TEST_PASSES:-lint werror asan tsan fuzz}"

deploy/scripts/install-deps.sh
deploy/scripts/broker.sh ensure

# Optimised passes keep line tables only (-g1): enough for every stack trace a
# sanitizer or a crash prints, and a quarter less compile time than -g.
LINES_ONLY="-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -g1 -DNDEBUG"
FUZZERS="config_fuzz amqp_props_fuzz consumer_ledger_fuzz publish_ledger_fuzz request_fuzz"

# pass_setup NAME: what a pass builds and runs, in globals. TARGETS: ninja
# targets (all when empty: a sanitizer pass builds only the test binaries it
# runs, which pull in the daemon, mqctl and the helpers they start); CMAKE_ARGS;
# SELECT: ctest arguments; TEST_ENV: the tests' environment; TIDY_SET: the
# clang-tidy set (lint.sh) the pass checks.
pass_setup() {
  TARGETS="" SELECT="" TIDY_SET="" TEST_ENV=() CMAKE_ARGS=()
  case "$1" in
    werror)
      CMAKE_ARGS=(-DCMAKE_BUILD_TYPE=RelWithDebInfo "$LINES_ONLY")
      TIDY_SET=sources
      ;;
    asan)
      # Clang: it builds these targets in 251 s where g++ took 663 (g++
      # builds every file in the werror pass). -O0 with line tables only
      # (-g1): every frame of a sanitizer report keeps its function, file
      # and line.
      TARGETS="unit_tests integration_tests"
      CMAKE_ARGS=(-DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS_DEBUG=-O0 -g1" -DMQS_SANITIZE=ON
        -DCMAKE_CXX_COMPILER=clang++-14 -DCMAKE_C_COMPILER=clang-14 -DMQS_UNITY=ON)
      SELECT="-L unit|integration"
      TEST_ENV=("ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1"
        "LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp:print_suppressions=0"
        "UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1")
      ;;
    tsan)
      TARGETS="unit_tests integration_tests fault_tests"
      CMAKE_ARGS=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DMQS_TSAN=ON -DMQS_UNITY=ON
        -DCMAKE_CXX_COMPILER=clang++-14 -DCMAKE_C_COMPILER=clang-14 "$LINES_ONLY")
      SELECT="-L unit|integration|fault -LE slow"
      TEST_ENV=("TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:ignore_noninstrumented_modules=1:suppressions=$PWD/tests/tsan.supp")
      TIDY_SET=tests
      ;;
    fuzz)
      TARGETS="$FUZZERS"
      CMAKE_ARGS=(-DMQS_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
        -DCMAKE_CXX_COMPILER=clang++-14 "$LINES_ONLY")
      ;;
    *) return 1 ;;
  esac
}

# build_pass NAME: configure build/NAME and build its targets.
build_pass() {
  pass_setup "$1"
  cmake -S . -B "build/$1" -G Ninja -DMQS_WERROR=ON "${CMAKE_ARGS[@]}" >/dev/null
  # shellcheck disable=SC2086  # $TARGETS is a list of ninja targets
  ninja -C "build/$1" -j "$JOBS" $TARGETS
}

# The background clang-tidy (TIDY_PID) is stopped with the script.
TIDY_PID=""
stop_tidy() {
  if [ -n "$TIDY_PID" ]; then
    pkill -TERM -P "$TIDY_PID" 2>/dev/null || true
    kill "$TIDY_PID" 2>/dev/null || true
  fi
}
trap stop_tidy EXIT

# run_pass NAME: build, run the tests SELECT picks (with the werror pass's
# clang-tidy beside them), print the slowest tests, then the tsan pass's
# clang-tidy.
run_pass() {
  local name=$1 dir="build/$1"
  echo "=== test pass: $name ==="
  local t0=$SECONDS
  build_pass "$name"
  echo "--- $name: built in $((SECONDS - t0)) s"
  # clang-tidy on the sources (about 10 minutes of CPU) runs at the lowest
  # priority beside the werror pass's tests, which mostly wait on the broker:
  # the tests keep their CPU, the tidy takes what they leave idle. On the tests
  # (16 minutes of CPU) it runs after the TSan tests, never beside them: a
  # sanitizer build's daemon is slow enough that work beside it, even at
  # nice 19, pushes latency tests past their bounds (2026-12-02: the TSan
  # build beside the ASan tests failed "streams being set up do not stall
  # another stream's deliveries", a 380 ms gap for < 300 ms).
  if [ "$TIDY_SET" = sources ]; then
    nice -n 19 deploy/scripts/lint.sh tidy "$dir" "$TIDY_SET" >"$dir/tidy.log" 2>&1 &
    TIDY_PID=$!
  fi
  deploy/scripts/broker.sh ensure   # the fault tests stop and start it
  # shellcheck disable=SC2086  # $SELECT is a list of ctest arguments
  if ! env "${TEST_ENV[@]}" ctest --test-dir "$dir" --output-on-failure --timeout 300 $SELECT; then
    deploy/scripts/failure-digest.sh "$dir/Testing/Temporary/LastTest.log" || true
    exit 8
  fi
  # Where the pass's time went (CTest keeps each test's last duration).
  echo "--- $name: slowest tests (s):"
  # (Its lines are "NAME RUNS SECONDS", the name with spaces; "---" ends them.)
  awk '$1 == "---" { exit } NF >= 3 { c = $NF; NF -= 2; printf "  %7.1f  %s\n", c, $0 }' \
    "$dir/Testing/Temporary/CTestCostData.txt" 2>/dev/null | sort -g -r | head -15 || true
  if [ -n "$TIDY_PID" ]; then
    local tidy_rc=0 t1=$SECONDS
    wait "$TIDY_PID" || tidy_rc=$?
    TIDY_PID=""
    cat "$dir/tidy.log"
    echo "--- $name: clang-tidy waited for $((SECONDS - t1)) s after the tests"
    if [ "$tidy_rc" -ne 0 ]; then exit "$tidy_rc"; fi
  fi
  if [ "$TIDY_SET" = tests ]; then deploy/scripts/lint.sh tidy "$dir" tests; fi
  echo "--- $name: passed in $((SECONDS - t0)) s"
}

run_fuzz() {
  echo "=== test pass: fuzz ==="
  local t0=$SECONDS
  build_pass fuzz
  deploy/scripts/lint.sh tidy build/fuzz fuzz
  # Two at a time: each fuzzer uses one core, the machine has two (JOBS).
  fuzz_one() {
    local target=$1 work="build/fuzz/corpus/$1"
    # The committed corpus seeds a scratch copy, which the run may grow.
    rm -rf "$work" && mkdir -p "$work"
    cp tests/fuzz/corpus/"${target%_fuzz}"/* "$work"/
    if [ "$target" = config_fuzz ]; then cp deploy/config/* "$work"/; fi
    (cd build/fuzz && "tests/fuzz/$target" -max_total_time="${MQS_FUZZ_SECONDS:-20}" \
      -rss_limit_mb=2048 -timeout=10 -max_len=65536 -print_final_stats=1 "corpus/$target")
  }
  local targets fuzz_failed=0 i entry target pids
  read -r -a targets <<<"$FUZZERS"
  for ((i = 0; i < ${#targets[@]}; i += JOBS)); do
    pids=()
    for target in "${targets[@]:i:JOBS}"; do
      fuzz_one "$target" >"build/fuzz/$target.log" 2>&1 &
      pids+=("$!:$target")
    done
    for entry in "${pids[@]}"; do
      target=${entry#*:}
      if wait "${entry%%:*}"; then
        grep -v -e '^#' -e '^"' "build/fuzz/$target.log" | tail -8
        echo "--- fuzz: $target ran ${MQS_FUZZ_SECONDS:-20} s without a finding"
      else
        grep -v -e '^#' -e '^"' "build/fuzz/$target.log" | tail -60
        echo "--- fuzz: $target FAILED (its input is in build/fuzz/)"
        fuzz_failed=1
      fi
    done
  done
  if [ "$fuzz_failed" -ne 0 ]; then exit 9; fi
  echo "--- fuzz: passed in $((SECONDS - t0)) s"
}

for pass in $PASSES; do
  case "$pass" in
    lint) deploy/scripts/lint.sh format ;;
    werror | asan | tsan) run_pass "$pass" ;;
    fuzz) run_fuzz ;;
    *) echo "unknown pass $pass" >&2; exit 64 ;;
  esac
done
echo "=== all tests passed ==="
