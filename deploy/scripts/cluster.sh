#!/usr/bin/env bash
# cluster.sh: a throw-away three-node RabbitMQ cluster on this machine, for the
# failover test (issue 3, fault test 8: tests/integration/cluster_test.cc).
#
#   cluster.sh start    stop leftovers, wipe $MQS_CLUSTER_DIR, start three nodes
#                       in parallel, join nodes 2 and 3 to node 1; exit 0 once
#                       all three run as one cluster and answer AMQP
#   cluster.sh stop     stop the three nodes (rabbitmqctl stop, SIGKILL after a
#                       deadline); keeps the directory (logs) for inspection
#   cluster.sh status   exit 0 when all three nodes run
#
# Nodes mqs-c1@localhost .. mqs-c3@localhost, AMQP 127.0.0.1:5681..5683,
# Erlang distribution ports 25681..25683, data and logs under
# $MQS_CLUSTER_DIR (default /tmp/mqs-cluster). The default node (rabbit@host,
# 5672) is never touched: every setting comes from the environment below, not
# from /etc/rabbitmq, and only processes found through our own pid files or
# carrying our node marker are ever signalled.
#
# Needs root (Debian's rabbitmq-server/rabbitmqctl wrappers then run as the
# rabbitmq user, which shares the Erlang cookie /var/lib/rabbitmq/.erlang.cookie
# with the CLI) or the rabbitmq user. Every wait has a deadline.
set -euo pipefail

BASE="${MQS_CLUSTER_DIR:-/tmp/mqs-cluster}"
DEADLINE_S="${MQS_CLUSTER_DEADLINE_S:-60}"
HOST=localhost
NAMES=(mqs-c1 mqs-c2 mqs-c3)
AMQP_PORTS=(5681 5682 5683)
DIST_PORTS=(25681 25682 25683)
COOKIE=/var/lib/rabbitmq/.erlang.cookie
# Put on each node's Erlang command line so that `pgrep -af mqs-c` and the
# leftover search below find the VMs (3.10 passes the node name by environment).
MARK=-mqs_cluster_node

now_ms() { echo $(($(date +%s%N) / 1000000)); }
T0=$(now_ms)
elapsed() {
  local ms=$(($(now_ms) - T0))
  printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}
log() { echo "cluster: [$(elapsed) s] $*"; }
die() {
  echo "cluster: [$(elapsed) s] ERROR: $*" >&2
  exit 1
}

node() { echo "${NAMES[$1]}@$HOST"; }
dir() { echo "$BASE/${NAMES[$1]}"; }
ctl() {
  local i=$1
  shift
  timeout 60 rabbitmqctl -n "$(node "$i")" "$@"
}

# rabbitmqctl for a cluster step; its output goes to <node>/join.out.
step() {
  local i=$1
  shift
  ctl "$i" "$@" >>"$(dir "$i")/join.out" 2>&1 ||
    die "rabbitmqctl -n $(node "$i") $* failed: $(tail -n 20 "$(dir "$i")/join.out")"
}

# A zombie counts as gone (a detached VM's parent is init, which in a
# container may be slow to reap it).
alive() { [[ -e /proc/$1 ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

answers() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# The pid of node i's VM, or nothing: from its pid file, else by our marker on
# the command line (a VM that died before writing it, or a wiped directory).
is_node_vm() {
  local cmdline
  cmdline=$(tr '\0' ' ' <"/proc/$2/cmdline" 2>/dev/null) || return 1
  [[ "$cmdline" == *"$MARK $(node "$1") "* ]]
}
node_pid() {
  local i=$1 pid
  pid=$(cat "$(dir "$i")/pid" 2>/dev/null || true)
  if [[ "$pid" =~ ^[0-9]+$ ]] && is_node_vm "$i" "$pid"; then
    echo "$pid"
    return
  fi
  # /proc rather than pgrep: procps may be missing on a minimal machine.
  local p
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    if [[ $(cat "$p/comm" 2>/dev/null) == beam.smp ]] && is_node_vm "$i" "$pid"; then
      echo "$pid"
      return
    fi
  done
}

check_user() {
  if [[ $(id -u) -ne 0 && $(id -un) != rabbitmq ]]; then
    die "run as root (or as the rabbitmq user): the nodes run as the rabbitmq user"
  fi
  command -v rabbitmq-server >/dev/null || die "rabbitmq-server is not installed"
  command -v rabbitmqctl >/dev/null || die "rabbitmqctl is not installed"
}

# `rabbitmqctl wait` follows the pid file until the app runs (or the VM
# dies). It reads the file once: caught while the VM is still writing it, it
# fails at once with garbage_in_pid_file, so that case is retried until the
# deadline; any other failure is final.
wait_node() {
  local i=$1 d left deadline=$((SECONDS + DEADLINE_S))
  d=$(dir "$i")
  while :; do
    left=$((deadline - SECONDS))
    ((left > 0)) || return 1
    ctl "$i" wait "$d/pid" --timeout "$left" >"$d/wait.out" 2>&1 && return 0
    grep -q garbage_in_pid_file "$d/wait.out" || return 1
    sleep 0.2
  done
}

# One node's rabbitmq-server, detached. All settings by environment, so
# nothing from /etc/rabbitmq (meant for the default node) applies.
start_node() {
  local i=$1 d
  d=$(dir "$i")
  env RABBITMQ_NODENAME="$(node "$i")" \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="${AMQP_PORTS[$i]}" \
    RABBITMQ_DIST_PORT="${DIST_PORTS[$i]}" \
    RABBITMQ_CONF_ENV_FILE="$BASE/rabbitmq-env.conf" \
    RABBITMQ_CONFIG_FILE="$BASE/rabbitmq.conf" \
    RABBITMQ_ADVANCED_CONFIG_FILE="$BASE/advanced.config" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$BASE/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$d/mnesia" \
    RABBITMQ_LOG_BASE="$d/log" \
    RABBITMQ_PID_FILE="$d/pid" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="$MARK $(node "$i")" \
    rabbitmq-server -detached >"$d/start.out" 2>&1
}

do_stop() {
  local i pids=() pid stopped
  for i in 0 1 2; do
    pid=$(node_pid "$i")
    pids[i]=$pid
    [[ -n "$pid" ]] && { timeout 30 rabbitmqctl -n "$(node "$i")" stop >/dev/null 2>&1 & }
  done
  wait || true
  local deadline=$((SECONDS + 15))
  for i in 0 1 2; do
    pid=${pids[i]}
    [[ -z "$pid" ]] && continue
    while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    if alive "$pid"; then
      log "$(node "$i") (pid $pid) still runs after rabbitmqctl stop: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    stopped+=" $(node "$i")"
  done
  # epmd outlives the nodes; if this script started it, end it (epmd -kill
  # refuses while any node, e.g. the default one, is registered).
  if [[ -f "$BASE/started-epmd" ]]; then
    epmd -kill >/dev/null 2>&1 || true
    rm -f "$BASE/started-epmd"
  fi
  log "stopped:${stopped:- nothing was running}"
}

write_config() {
  mkdir -p "$BASE"
  : >"$BASE/rabbitmq-env.conf"
  echo '[].' >"$BASE/enabled_plugins"
  echo '[].' >"$BASE/advanced.config"
  cat >"$BASE/rabbitmq.conf" <<'EOF'
log.console = false
log.file.level = info
EOF
  for i in 0 1 2; do mkdir -p "$(dir "$i")/mnesia" "$(dir "$i")/log"; done
  if [[ $(id -u) -eq 0 ]]; then chown -R rabbitmq:rabbitmq "$BASE"; fi
}

do_start() {
  local i
  do_stop >/dev/null
  for i in 0 1 2; do
    if answers "${AMQP_PORTS[$i]}"; then
      die "port ${AMQP_PORTS[$i]} is taken by something else; cannot start $(node "$i")"
    fi
  done
  # Only what this script creates (MQS_CLUSTER_DIR may be shared).
  rm -rf "$BASE"/mqs-c[123] "$BASE"/{rabbitmq-env.conf,rabbitmq.conf,advanced.config,enabled_plugins}
  write_config
  if ! epmd -names >/dev/null 2>&1; then touch "$BASE/started-epmd"; fi
  # Three nodes starting at once would each create a different cookie.
  if [[ ! -f "$COOKIE" && $(id -u) -eq 0 ]]; then
    (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$COOKIE")
    chown rabbitmq:rabbitmq "$COOKIE"
    chmod 400 "$COOKIE"
  fi

  log "starting $(node 0), $(node 1), $(node 2) (AMQP ${AMQP_PORTS[*]})"
  local pids=()
  for i in 0 1 2; do
    start_node "$i" &
    pids[i]=$!
  done
  for i in 0 1 2; do
    wait "${pids[i]}" || die "rabbitmq-server -detached for $(node "$i") failed: $(cat "$(dir "$i")/start.out")"
  done
  for i in 0 1 2; do
    wait_node "$i" &
    pids[i]=$!
  done
  for i in 0 1 2; do
    if ! wait "${pids[i]}"; then
      tail -n 30 "$(dir "$i")/log/"*.log >&2 2>/dev/null || true
      die "$(node "$i") did not start within ${DEADLINE_S} s: $(cat "$(dir "$i")/wait.out")"
    fi
  done
  log "three nodes running"

  # Nodes 2 and 3 join node 1. stop_app/reset and start_app run on both at
  # once; the joins run one after the other (concurrent joins into the same
  # node can race in Mnesia).
  for i in 1 2; do (step "$i" stop_app && step "$i" reset) & pids[i]=$!; done
  for i in 1 2; do wait "${pids[i]}" || exit 1; done
  for i in 1 2; do step "$i" join_cluster "$(node 0)"; done
  for i in 1 2; do step "$i" start_app & pids[i]=$!; done
  for i in 1 2; do wait "${pids[i]}" || exit 1; done
  log "$(node 1) and $(node 2) joined $(node 0)"
  local running
  running=$(ctl 0 eval 'length(rabbit_nodes:all_running()).' 2>/dev/null || true)
  [[ "$running" == 3 ]] || die "cluster_status on $(node 0): $running running nodes, want 3"
  local deadline=$((SECONDS + DEADLINE_S))
  for i in 0 1 2; do
    until answers "${AMQP_PORTS[$i]}"; do
      ((SECONDS < deadline)) || die "$(node "$i") does not answer on ${AMQP_PORTS[$i]}"
      sleep 0.1
    done
  done
  log "cluster of 3 running nodes ready: amqp://guest:guest@127.0.0.1:{${AMQP_PORTS[*]}}/ (dir $BASE)"
}

do_status() {
  local i pid rc=0
  for i in 0 1 2; do
    pid=$(node_pid "$i")
    if [[ -n "$pid" ]]; then
      echo "$(node "$i"): running, pid $pid, AMQP ${AMQP_PORTS[$i]}"
    else
      echo "$(node "$i"): not running"
      rc=1
    fi
  done
  if ((rc == 0)); then
    echo "running cluster nodes (as seen by $(node 0)): $(ctl 0 eval 'rabbit_nodes:all_running().' 2>&1)"
  fi
  return $rc
}

case "${1:-}" in
  start)
    check_user
    do_start
    ;;
  stop)
    check_user
    do_stop
    ;;
  status)
    do_status
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 64
    ;;
esac
