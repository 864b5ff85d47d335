#!/usr/bin/env bash
# Make sure a Docker engine that builds with BuildKit is usable, installing and starting it when run as root:
#   - no suitable client: apt-get install docker.io (Debian/Ubuntu, root only)
#   - daemon not running: systemctl start docker, or dockerd in the background (log /var/log/dockerd.log)
# Prints the docker client to use on stdout; progress and errors on stderr; exits 1 with the reason when
# the engine cannot be made usable. Usage: docker/ensure-engine.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/common.sh"

log() { printf '[engine] %s\n' "$*" >&2; }
die() { printf 'ensure-engine: %s\n' "$*" >&2; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }

if ! docker=$(pick_docker); then
  is_root || die "no docker client with BuildKit found; install Docker (as root this script installs docker.io)"
  command -v apt-get >/dev/null 2>&1 || die "no docker client with BuildKit found and no apt-get to install docker.io"
  log "installing docker.io with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends docker.io >/dev/null
  DOCKER=/usr/bin/docker
  docker=$(pick_docker) || die "docker.io installed but its client cannot build with BuildKit"
fi

problem=$(docker_problem "$docker")
if [ -n "$problem" ] && is_root && command -v dockerd >/dev/null 2>&1 && ! pgrep -x dockerd >/dev/null; then
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    log "starting the docker service"
    systemctl start docker || true
  fi
  if ! pgrep -x dockerd >/dev/null; then
    log "starting dockerd (log: /var/log/dockerd.log)"
    # setsid: the daemon must outlive this script and the shell (or test session) that ran it.
    setsid dockerd >>/var/log/dockerd.log 2>&1 </dev/null &
  fi
  for _ in $(seq 60); do
    problem=$(docker_problem "$docker"); [ -z "$problem" ] && break
    sleep 1
  done
fi
[ -z "$problem" ] || die "$problem"
log "using $docker (engine $("$docker" version -f '{{.Server.Version}}' 2>/dev/null))"
echo "$docker"
