#!/usr/bin/env bash
# Make a plain Debian base image from the Debian archive with debootstrap, for machines that cannot pull
# from a container registry (CI uses it). Skips the work when the tag already exists.
# Usage: docker/make-base.sh [TAG]        (default local/debian:bookworm; root and debootstrap needed)
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), DOCKER (client to use).
set -euo pipefail

tag=${1:-local/debian:bookworm}
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
docker=${DOCKER:-docker}

if "$docker" image inspect "$tag" >/dev/null 2>&1; then
  echo "[make-base] $tag exists"; exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "make-base: debootstrap needs root (run with sudo)" >&2; exit 1; }
if ! command -v debootstrap >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || { echo "make-base: install debootstrap first" >&2; exit 1; }
  echo "[make-base] installing debootstrap with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; }
fi

root=$(mktemp -d /var/tmp/debootstrap.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "[make-base] debootstrap --variant=minbase $suite from $mirror (a few minutes)"
debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$root.log" 2>&1 \
  || { tail -20 "$root.log" >&2; echo "make-base: debootstrap failed (log: $root.log)" >&2; exit 1; }
rm -f "$root.log"
# Same trims as the official debian images: no package cache, no apt lists (builds run apt-get update).
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/tmp/* "$root"/var/log/*.log
tar -C "$root" --numeric-owner -c . \
  | "$docker" import --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' - "$tag" >/dev/null
echo "[make-base] made $tag ($("$docker" image inspect -f '{{.Size}}' "$tag") bytes)"
