# Shell helpers shared by build_and_push.sh, quickstart.sh, local_test/*.sh and docker/ensure-engine.sh.
# Source it; it defines functions only.

# Print the first docker client that can build with BuildKit (--secret, RUN --mount): $DOCKER if set, then
# every `docker` on PATH, then /usr/bin/docker. A Docker >= 23 client needs its buildx plugin for that;
# Debian's docker.io 20.10 client has BuildKit built in.
pick_docker() {
  local c candidates=()
  [ -n "${DOCKER:-}" ] && candidates+=("$DOCKER")
  while IFS= read -r c; do candidates+=("$c"); done < <(type -ap docker 2>/dev/null || true)
  candidates+=(/usr/bin/docker)
  for c in "${candidates[@]}"; do
    command -v "$c" >/dev/null 2>&1 || continue
    if DOCKER_BUILDKIT=1 "$c" build --help 2>/dev/null | grep -q -- '--secret'; then
      echo "$c"; return 0
    fi
  done
  return 1
}

# Say why the docker engine cannot be used, or nothing when `docker info` works.
docker_problem() {
  local docker=$1 out
  # `docker version` says why it failed on one line (`docker info` may only say "errors pretty printing").
  if out=$("$docker" version -f '{{.Server.Version}}' 2>&1 >/dev/null); then return 0; fi
  out=$(grep -v '^$' <<<"$out" | tail -1)
  if grep -qi 'permission denied' <<<"$out"; then
    echo "no permission to use the Docker daemon: run as root or add yourself to the docker group ($out)"
  else
    echo "the Docker daemon is not running or not reachable: $out"
  fi
}

# The short git commit of the repo (with -dirty when there are local changes), or "unknown".
git_tag() {
  local root=$1 sha
  sha=$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null) || { echo unknown; return; }
  git -C "$root" diff --quiet HEAD -- 2>/dev/null || sha="$sha-dirty"
  echo "$sha"
}
