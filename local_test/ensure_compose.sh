#!/usr/bin/env bash
# Make sure a Docker Compose the SageMaker SDK's local mode can drive is installed; safe to re-run.
# The SDK (sagemaker 2.x, sagemaker/local/image.py) uses `docker compose` when it reports v2, else a
# `docker-compose` executable. Debian/Ubuntu ship the latter as the docker-compose package (v1.29, fine
# for local mode's compose file format 2.3); the compose plugin is not in Debian's archive.
# Usage: local_test/ensure_compose.sh
set -euo pipefail

if docker compose version 2>/dev/null | grep -q 'v2'; then
  echo "[compose] docker compose plugin: $(docker compose version)"; exit 0
fi
if command -v docker-compose >/dev/null 2>&1; then
  echo "[compose] $(docker-compose --version)"; exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure_compose: install Docker Compose (https://docs.docker.com/compose/install/); no apt-get here" >&2
  exit 1
fi
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "[compose] installing docker-compose with apt-get"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
echo "[compose] $(docker-compose --version)"
