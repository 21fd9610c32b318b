#!/usr/bin/env bash
# test.sh: install what is missing, start a local RabbitMQ when none answers,
# then:
#   lint    clang-format must leave every C++ file as it is;
#   werror  build with warnings as errors (g++), run every test (unit,
#           integration, fault, cluster, tls, bench smoke) and, beside them at
#           the lowest priority, clang-tidy on the daemon and client;
#   asan    build with AddressSanitizer + UndefinedBehaviorSanitizer and run the
#           unit and integration tests (the fault, cluster, amqps and bench
#           tests run in the werror pass, the fault tests also under TSan);
#   tsan    build with Clang, ThreadSanitizer and -Wthread-safety, and run the
#           unit, integration and fault tests but the three slowest
#           (label fault-slow);
#   fuzz    build the libFuzzer targets (tests/fuzz) and run each for
#           MQS_FUZZ_SECONDS (default 20) from its committed corpus.
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

# run_pass NAME CTEST_ARGS TARGETS CMAKE_ARGS...: configure, build TARGETS
# (all when empty: a sanitizer pass builds only the test binaries it runs,
# which pull in the daemon, mqctl and the helpers they start), run the tests
# ctest selects with CTEST_ARGS (e.g. "-LE cluster"), then print the slowest.
run_pass() {
  local name=$1 select=$2 targets=$3; shift 3
  local dir="build/$name"
  echo "=== test pass: $name ==="
  local t0=$SECONDS
  cmake -S . -B "$dir" -G Ninja -DMQS_WERROR=ON "$@" >/dev/null
  # shellcheck disable=SC2086  # $targets is a list of ninja targets
  ninja -C "$dir" -j "$JOBS" $targets
  echo "--- $name: built in $((SECONDS - t0)) s"
  # clang-tidy (about 10 minutes of CPU) runs at the lowest priority beside
  # the tests, which mostly wait on the broker: the tests keep their CPU, the
  # tidy takes what they leave idle.
  local tidy_pid=""
  if [ "$name" = werror ]; then
    nice -n 19 deploy/scripts/lint.sh tidy "$dir" >"$dir/tidy.log" 2>&1 &
    tidy_pid=$!
    trap "kill $tidy_pid 2>/dev/null || true" EXIT
  fi
  deploy/scripts/broker.sh ensure   # the fault tests stop and start it
  # shellcheck disable=SC2086  # $select is a list of ctest arguments
  if ! ctest --test-dir "$dir" --output-on-failure --timeout 300 $select; then
    deploy/scripts/failure-digest.sh "$dir/Testing/Temporary/LastTest.log" || true
    exit 8
  fi
  # Where the pass's time went (CTest keeps each test's last duration).
  echo "--- $name: slowest tests (s):"
  # (Its lines are "NAME RUNS SECONDS", the name with spaces; "---" ends them.)
  awk '$1 == "---" { exit } NF >= 3 { c = $NF; NF -= 2; printf "  %7.1f  %s\n", c, $0 }' \
    "$dir/Testing/Temporary/CTestCostData.txt" 2>/dev/null | sort -g -r | head -15 || true
  if [ -n "$tidy_pid" ]; then
    local tidy_rc=0
    wait "$tidy_pid" || tidy_rc=$?
    trap - EXIT
    cat "$dir/tidy.log"
    if [ "$tidy_rc" -ne 0 ]; then exit "$tidy_rc"; fi
  fi
  echo "--- $name: passed in $((SECONDS - t0)) s"
}

for pass in $PASSES; do
  case "$pass" in
    lint) deploy/scripts/lint.sh format ;;
    werror) run_pass werror "" "" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$LINES_ONLY" ;;
    asan)
      (
        export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1"
        export LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp:print_suppressions=0"
        export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
        # -O0 with line tables only (-g1): every frame of a sanitizer report
        # keeps its function, file and line, and the build takes ~15 % less
        # than with full debug info (-g).
        run_pass asan "-L unit|integration" "unit_tests integration_tests" -DCMAKE_BUILD_TYPE=Debug \
          "-DCMAKE_CXX_FLAGS_DEBUG=-O0 -g1" -DMQS_SANITIZE=ON
      )
      ;;
    tsan)
      (
        export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:ignore_noninstrumented_modules=1:suppressions=$PWD/tests/tsan.supp"
        run_pass tsan "-L unit|integration|fault -LE slow" "unit_tests integration_tests fault_tests" \
          -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMQS_TSAN=ON \
          -DCMAKE_CXX_COMPILER=clang++-14 -DCMAKE_C_COMPILER=clang-14 "$LINES_ONLY"
      )
      ;;
    fuzz)
      echo "=== test pass: fuzz ==="
      t0=$SECONDS
      cmake -S . -B build/fuzz -G Ninja -DMQS_WERROR=ON -DMQS_FUZZ=ON \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++-14 "$LINES_ONLY" >/dev/null
      ninja -C build/fuzz -j "$JOBS" config_fuzz amqp_props_fuzz consumer_ledger_fuzz publish_ledger_fuzz request_fuzz
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
      targets=(config_fuzz amqp_props_fuzz consumer_ledger_fuzz publish_ledger_fuzz request_fuzz)
      fuzz_failed=0
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
      ;;
    *) echo "unknown pass $pass" >&2; exit 64 ;;
  esac
done
echo "=== all tests passed ==="
