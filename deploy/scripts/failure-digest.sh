#!/usr/bin/env bash
# failure-digest.sh LASTTEST_LOG: after a failed ctest run, the failed
# assertions of every failed test in a few lines (test name, file:line, the
# expression and its expansion, sanitizer and timeout summaries).
#
# Why: a CI log is often kept as its head and its tail only. ctest prints the
# output of each failed test in full (a soak report can fill the head), so the
# failing assertion of the second failed test was never seen. This digest,
# printed last, puts each failure where a truncated log still shows it.
set -euo pipefail
log=${1:?usage: failure-digest.sh LastTest.log}
max_lines=${MQS_DIGEST_LINES:-30}
[ -f "$log" ] || { echo "failure digest: no $log"; exit 0; }
echo "=== failure digest (${log}) ==="
awk -v max="$max_lines" '
  function emit(s) {
    if (printed >= max) return
    if (length(s) > 600) s = substr(s, 1, 597) "..."
    print s
    ++printed
  }
  function flush_test() {
    if (name != "" && failed) {
      emit("FAILED " substr(name, 1, 150))
      for (i = 1; i <= n; ++i) emit("  " lines[i])
      if (n == 0) emit("  (no assertion printed; a crash or a timeout: " took ")")
    }
    n = 0; failed = 0; took = ""
  }
  /^[0-9]+\/[0-9]+ Testing: / { flush_test(); name = $0; sub(/^[0-9]+\/[0-9]+ Testing: /, "", name); next }
  /^Test time = / { took = $0; next }
  /^Test Failed\./ { failed = 1; next }
  /^Command: / { next }
  # Catch: "file:line: FAILED:", then the expression, its expansion and the
  # INFO messages in scope, up to a blank line: one digest line.
  /: FAILED:$/ && n < 9 {
    where = $0; sub(/^.*\//, "", where); sub(/: FAILED:$/, "", where)
    text = where ":"
    while ((getline line) > 0 && line != "") {
      if (line ~ /^with (expansion|message|messages):$/) line = "|"
      text = text " " line
    }
    gsub(/  +/, " ", text)
    lines[++n] = text
    next
  }
  /(ERROR|SUMMARY): (Address|Undefined|Thread|Leak)Sanitizer|runtime error:|WARNING: ThreadSanitizer/ && n < 9 {
    lines[++n] = $0
    next
  }
  END { flush_test(); if (printed == 0) print "(no failed test found in the log)" }
' "$log"
