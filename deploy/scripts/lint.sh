#!/usr/bin/env bash
# lint.sh: the source checks CI runs (deploy/scripts/test.sh).
#   lint.sh format           every tracked C++ file is as clang-format leaves it
#   lint.sh tidy BUILD_DIR [SET]
#                            clang-tidy (.clang-tidy, tests/.clang-tidy) with
#                            BUILD_DIR's compile_commands.json on one SET:
#                              sources  daemon/ and client/ (the default)
#                              tests    tests/ but tests/fuzz: BUILD_DIR must
#                                       be a Clang build whose test binaries'
#                                       precompiled headers are built (clang-tidy
#                                       cannot read GCC's), e.g. the TSan pass's
#                              fuzz     tests/fuzz: a build with MQS_FUZZ=ON
#   lint.sh fix              rewrite every tracked C++ file with clang-format
set -euo pipefail
cd "$(dirname "$0")/../.."
JOBS="${MQS_JOBS:-$(nproc)}"
FORMAT="$(command -v clang-format-14 || command -v clang-format)"
TIDY="$(command -v run-clang-tidy-14 || command -v run-clang-tidy)"
TIDY_ONE="$(command -v clang-tidy-14 || command -v clang-tidy)"

files() { git ls-files -- '*.cc' '*.h'; }

case "${1:-}" in
  format)
    bad=()
    while IFS= read -r f; do
      if ! "$FORMAT" --dry-run -Werror "$f" >/dev/null 2>&1; then bad+=("$f"); fi
    done < <(files)
    if [ ${#bad[@]} -ne 0 ]; then
      echo "lint: ${#bad[@]} files differ from .clang-format (deploy/scripts/lint.sh fix):" >&2
      printf '  %s\n' "${bad[@]}" >&2
      exit 1
    fi
    echo "lint: $(files | wc -l) files formatted"
    # ctest runs each Catch test by its name; catch_discover_tests splits a
    # name at ';' (a CMake list), and the halves match no test and "pass".
    semis="$(git ls-files -- 'tests/*.cc' | xargs perl -0ne \
      'while (/TEST_CASE\((.*?)\)\s*\{/sg) { my $n = $1; print "  $ARGV\n" if $n =~ /;/ }')"
    if [ -n "$semis" ]; then
      echo "lint: test names with ';' (ctest would never run them):" >&2
      echo "$semis" >&2
      exit 1
    fi
    ;;
  fix)
    files | xargs "$FORMAT" -i
    ;;
  tidy)
    dir="${2:?build directory}"
    set_name="${3:-sources}"
    abs_dir="$(cd "$dir" && pwd)"
    t0=$SECONDS
    # Generated protobuf code and third-party headers are not ours to lint;
    # HeaderFilterRegex in .clang-tidy keeps the diagnostics to our headers.
    case "$set_name" in
      sources) mapfile -t srcs < <(git ls-files -- 'daemon/*.cc' 'client/*.cc') ;;
      tests) mapfile -t srcs < <(git ls-files -- 'tests/*.cc' ':!tests/fuzz/*' ':!tests/package/*') ;;
      fuzz) mapfile -t srcs < <(git ls-files -- 'tests/fuzz/*.cc') ;;
      *) echo "lint: unknown tidy set $set_name (sources, tests or fuzz)" >&2; exit 64 ;;
    esac
    out="$("$TIDY" -quiet -j "$JOBS" -p "$dir" "${srcs[@]/#/$PWD/}" 2>&1)" || true
    if [ "$set_name" = tests ]; then
      # The package test's program is built against the installed headers,
      # outside this build: the tree's include paths stand in for them.
      out+=$'\n'"$("$TIDY_ONE" -quiet -p "$dir" --extra-arg="-I$PWD/client/include" \
        --extra-arg="-I$abs_dir/proto/gen" tests/package/main.cc 2>&1)" || true
      srcs+=(tests/package/main.cc)
    fi
    if grep -E "(warning|error): " <<<"$out" | grep -v "^[0-9]* warnings\\? generated" >/dev/null; then
      grep -E -A3 "(warning|error): " <<<"$out" >&2
      echo "lint: clang-tidy found problems" >&2
      exit 1
    fi
    echo "lint: clang-tidy clean on ${#srcs[@]} files ($set_name) in $((SECONDS - t0)) s"
    ;;
  *)
    echo "usage: lint.sh format|fix|tidy BUILD_DIR [sources|tests|fuzz]" >&2
    exit 64
    ;;
esac
