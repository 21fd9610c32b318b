#!/usr/bin/env bash
# tls-broker.sh: a throw-away RabbitMQ node with a TLS listener and a test CA
# made at start, for the amqps:// tests (tests/integration/tls_test.cc).
#
#   tls-broker.sh start    stop a leftover node, wipe $MQS_TLS_DIR, make the
#                          certificates, start the node; exit 0 once it answers
#                          on both ports
#   tls-broker.sh stop     stop the node (rabbitmqctl stop, SIGKILL after a
#                          deadline); keeps the directory (logs) for inspection
#   tls-broker.sh status   exit 0 when the node runs
#
# Node mqs-tls@localhost: AMQP 127.0.0.1:5692, AMQP over TLS 127.0.0.1:5693,
# Erlang distribution port 25693, data and logs under $MQS_TLS_DIR (default
# /tmp/mqs-tls). Certificates in $MQS_TLS_DIR/certs:
#   ca.pem                 the test CA
#   server.pem, .key       the broker's, signed by ca.pem, for localhost only
#                          (SAN DNS:localhost, no IP: 127.0.0.1 does not match)
#   client.pem, .key       a client certificate signed by ca.pem
#   other-ca.pem           an unrelated CA (signs nothing the broker has)
# The broker requires a client certificate signed by ca.pem (verify_peer,
# fail_if_no_peer_cert true), so a test that serves proves the daemon sent its
# broker.tls cert and key.
#
# The default node (rabbit@host, 5672) and the cluster nodes are never
# touched: every setting comes from the environment below, not from
# /etc/rabbitmq, and only a process found through our pid file or carrying our
# node marker is ever signalled. Needs root (or the rabbitmq user), as
# cluster.sh. Every wait has a deadline.
set -euo pipefail

BASE="${MQS_TLS_DIR:-/tmp/mqs-tls}"
DEADLINE_S="${MQS_TLS_DEADLINE_S:-60}"
NODE=mqs-tls@localhost
AMQP_PORT=5692
TLS_PORT=5693
DIST_PORT=25693
DIR="$BASE/node"
CERTS="$BASE/certs"
# On the VM's command line so that the leftover search below finds it.
MARK=-mqs_tls_node

now_ms() { echo $(($(date +%s%N) / 1000000)); }
T0=$(now_ms)
elapsed() {
  local ms=$(($(now_ms) - T0))
  printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}
log() { echo "tls-broker: [$(elapsed) s] $*"; }
die() {
  echo "tls-broker: [$(elapsed) s] ERROR: $*" >&2
  exit 1
}

ctl() { timeout 60 rabbitmqctl -n "$NODE" "$@"; }

# A zombie counts as gone (see cluster.sh).
alive() { [[ -e /proc/$1 ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

answers() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

is_node_vm() {
  local cmdline
  cmdline=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
  [[ "$cmdline" == *"$MARK $NODE "* ]]
}
# The VM's pid, or nothing: from the pid file, else by our marker.
node_pid() {
  local pid p
  pid=$(cat "$DIR/pid" 2>/dev/null || true)
  if [[ "$pid" =~ ^[0-9]+$ ]] && is_node_vm "$pid"; then
    echo "$pid"
    return
  fi
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    if [[ $(cat "$p/comm" 2>/dev/null) == beam.smp ]] && is_node_vm "$pid"; then
      echo "$pid"
      return
    fi
  done
}

check_user() {
  if [[ $(id -u) -ne 0 && $(id -un) != rabbitmq ]]; then
    die "run as root (or as the rabbitmq user): the node runs as the rabbitmq user"
  fi
  command -v rabbitmq-server >/dev/null || die "rabbitmq-server is not installed"
  command -v rabbitmqctl >/dev/null || die "rabbitmqctl is not installed"
  command -v openssl >/dev/null || die "openssl is not installed"
}

# `rabbitmqctl wait` reads the pid file once: caught while the VM still
# writes it, it fails with garbage_in_pid_file, retried until the deadline.
wait_node() {
  local left deadline=$((SECONDS + DEADLINE_S))
  while :; do
    left=$((deadline - SECONDS))
    ((left > 0)) || return 1
    ctl wait "$DIR/pid" --timeout "$left" >"$DIR/wait.out" 2>&1 && return 0
    grep -q garbage_in_pid_file "$DIR/wait.out" || return 1
    sleep 0.2
  done
}

do_stop() {
  local pid deadline
  pid=$(node_pid)
  if [[ -z "$pid" ]]; then
    log "stopped: nothing was running"
    return 0
  fi
  timeout 30 rabbitmqctl -n "$NODE" stop >/dev/null 2>&1 || true
  deadline=$((SECONDS + 15))
  while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
  if alive "$pid"; then
    log "$NODE (pid $pid) still runs after rabbitmqctl stop: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  if [[ -f "$BASE/started-epmd" ]]; then
    epmd -kill >/dev/null 2>&1 || true
    rm -f "$BASE/started-epmd"
  fi
  log "stopped: $NODE"
}

make_certs() {
  mkdir -p "$CERTS"
  local c="$CERTS" out="$BASE/openssl.out"
  : >"$out"
  # Short-lived: these exist for one test run.
  for ca in ca other-ca; do
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=mq-sidecar test $ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout "$c/$ca.key" -out "$c/$ca.pem" >>"$out" 2>&1 || die "openssl ($ca): $(tail -n 5 "$out")"
  done
  printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' >"$c/server.ext"
  printf 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n' >"$c/client.ext"
  for who in server client; do
    openssl req -new -newkey rsa:2048 -nodes -subj "/CN=$([[ $who == server ]] && echo localhost || echo mq-sidecar)" \
      -keyout "$c/$who.key" -out "$c/$who.csr" >>"$out" 2>&1 || die "openssl ($who csr): $(tail -n 5 "$out")"
    openssl x509 -req -in "$c/$who.csr" -CA "$c/ca.pem" -CAkey "$c/ca.key" -CAcreateserial -days 2 \
      -extfile "$c/$who.ext" -out "$c/$who.pem" >>"$out" 2>&1 || die "openssl ($who cert): $(tail -n 5 "$out")"
  done
  chmod 644 "$c"/*.pem "$c"/*.key
}

write_config() {
  mkdir -p "$DIR/mnesia" "$DIR/log"
  : >"$BASE/rabbitmq-env.conf"
  echo '[].' >"$BASE/enabled_plugins"
  echo '[].' >"$BASE/advanced.config"
  cat >"$BASE/rabbitmq.conf" <<EOF
log.console = false
log.file.level = info
listeners.ssl.default = 127.0.0.1:$TLS_PORT
ssl_options.cacertfile = $CERTS/ca.pem
ssl_options.certfile = $CERTS/server.pem
ssl_options.keyfile = $CERTS/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
EOF
  if [[ $(id -u) -eq 0 ]]; then chown -R rabbitmq:rabbitmq "$BASE"; fi
}

do_start() {
  do_stop >/dev/null
  local port
  for port in $AMQP_PORT $TLS_PORT; do
    answers "$port" && die "port $port is taken by something else; cannot start $NODE"
  done
  # Only what this script creates (MQS_TLS_DIR may be shared).
  rm -rf "$DIR" "$CERTS" "$BASE"/{rabbitmq-env.conf,rabbitmq.conf,advanced.config,enabled_plugins,openssl.out}
  mkdir -p "$BASE"
  make_certs
  write_config
  if ! epmd -names >/dev/null 2>&1; then touch "$BASE/started-epmd"; fi

  log "starting $NODE (AMQP $AMQP_PORT, TLS $TLS_PORT)"
  env RABBITMQ_NODENAME="$NODE" \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$AMQP_PORT" \
    RABBITMQ_DIST_PORT="$DIST_PORT" \
    RABBITMQ_CONF_ENV_FILE="$BASE/rabbitmq-env.conf" \
    RABBITMQ_CONFIG_FILE="$BASE/rabbitmq.conf" \
    RABBITMQ_ADVANCED_CONFIG_FILE="$BASE/advanced.config" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$BASE/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$DIR/mnesia" \
    RABBITMQ_LOG_BASE="$DIR/log" \
    RABBITMQ_PID_FILE="$DIR/pid" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="$MARK $NODE" \
    rabbitmq-server -detached >"$DIR/start.out" 2>&1 ||
    die "rabbitmq-server -detached failed: $(cat "$DIR/start.out")"
  if ! wait_node; then
    tail -n 30 "$DIR/log/"*.log >&2 2>/dev/null || true
    die "$NODE did not start within ${DEADLINE_S} s: $(cat "$DIR/wait.out")"
  fi
  local deadline=$((SECONDS + DEADLINE_S))
  for port in $AMQP_PORT $TLS_PORT; do
    until answers "$port"; do
      ((SECONDS < deadline)) || die "$NODE does not answer on $port"
      sleep 0.1
    done
  done
  log "ready: amqps://guest:guest@localhost:$TLS_PORT/ (CA $CERTS/ca.pem), amqp://...:$AMQP_PORT/"
}

do_status() {
  local pid
  pid=$(node_pid)
  if [[ -n "$pid" ]]; then
    echo "$NODE: running, pid $pid, AMQP $AMQP_PORT, TLS $TLS_PORT, certificates $CERTS"
    return 0
  fi
  echo "$NODE: not running"
  return 1
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
