#!/usr/bin/env bash
# The deploy files, as an operator uses them: every systemd unit passes
# `systemd-analyze verify` (the binary path pointed at this build), every
# config shipped in deploy/ passes `mq-sidecar --check-config`, and the
# compose file validates (Debian's docker-compose; no engine needed) and
# mounts only configs that pass it.
#   tests/deploy/verify.sh SOURCE_DIR MQ_SIDECAR_BINARY
set -euo pipefail
src=$1
daemon=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0

if command -v systemd-analyze >/dev/null; then
  for unit in "$src"/deploy/systemd/*.service; do
    name=$(basename "$unit")
    name=${name/@.service/@test.service}  # a template is verified as an instance
    sed "s|/usr/local/bin/mq-sidecar|$daemon|g" "$unit" >"$tmp/$name"
    if ! out=$(systemd-analyze verify "$tmp/$name" 2>&1) || [[ -n "$out" ]]; then
      echo "FAIL $name: systemd-analyze verify: $out"
      failed=1
    else
      echo "ok   $name: systemd-analyze verify"
    fi
  done
else
  echo "FAIL systemd-analyze is not installed (package systemd)"
  failed=1
fi

# check_config WHAT FILE: --check-config on FILE. The per-app configs take
# their replica's region and server from the environment, as the template
# unit's .env files and the compose file give them.
check_config() {
  local out
  if [[ ! -f "$2" ]]; then
    echo "FAIL $1${2#"$src"/}: no such file"
    failed=1
  elif out=$(MQ_SIDECAR_REGION=1 MQ_SIDECAR_SERVER=0 "$daemon" --check-config -c "$2" 2>&1); then
    echo "ok   $1${2#"$src"/}: --check-config"
  else
    echo "FAIL $1${2#"$src"/}: $out"
    failed=1
  fi
}

for config in "$src"/deploy/config/* "$src"/deploy/docker/mq-sidecar.yaml; do
  check_config "" "$config"
done

# The compose file is valid, and it mounts only configs that exist and were
# checked above (a sidecar's config is the file mounted at /etc/mq-sidecar/).
if command -v docker-compose >/dev/null; then
  compose="$src/deploy/docker/docker-compose.yml"
  if resolved=$(docker-compose -f "$compose" config 2>&1); then
    echo "ok   deploy/docker/docker-compose.yml: docker-compose config"
    mounted=$(grep -o -- "- [^ ]*:/etc/mq-sidecar/[^:]*" <<<"$resolved" | sed 's/^- //; s/:.*//' | sort -u)
    [[ -n "$mounted" ]] || { echo "FAIL the compose file mounts no sidecar config"; failed=1; }
    for config in $mounted; do check_config "compose mounts " "$config"; done
  else
    echo "FAIL deploy/docker/docker-compose.yml: $resolved"
    failed=1
  fi
else
  echo "FAIL docker-compose is not installed (deploy/scripts/install-deps.sh installs it)"
  failed=1
fi
exit "$failed"
