#!/usr/bin/env bash
# Set up everything the programs and tests need, natively; safe to re-run (skips what is in place).
#   - system tools: espeak-ng (synthetic speech), sox, libopus0 (Ogg/Opus live streams); installed with apt-get when missing
#   - .venv at the repo root with every Python dependency pinned (requirements/)
# Environment: PYTHON (default python3), TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cpu to
# get a small CPU-only torch instead of PyPI's CUDA build).
set -euo pipefail
cd "$(dirname "$0")"

log() { printf '[setup] %s\n' "$*"; }

missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v sox >/dev/null 2>&1 || missing+=(sox)
# libopus decodes Ogg/Opus live streams (the serving image has it too); --no-install-recommends sox may not bring it.
ldconfig -p 2>/dev/null | grep -q 'libopus\.so\.0' || missing+=(libopus0)
if ((${#missing[@]})); then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: please install ${missing[*]} (no apt-get here)" >&2; exit 1
  fi
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  log "installing ${missing[*]} with apt-get"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || { echo "setup: Python >= 3.10 is needed ($python is $("$python" --version 2>&1))" >&2; exit 1; }
  log "creating .venv with $("$python" --version 2>&1)"
  "$python" -m venv .venv
fi

# Re-install only when a requirements file changed since the last successful install.
stamp=.venv/.requirements.sha256
want=$(cat requirements/*.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing Python dependencies into .venv"
  pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "${pip[@]}" --index-url "$TORCH_INDEX_URL" -r requirements/torch-native.txt
  else
    "${pip[@]}" -r requirements/torch-native.txt
  fi
  "${pip[@]}" -r requirements/dev.txt
  echo "$want" >"$stamp"
fi
log "ready: $(.venv/bin/python -c 'import torch, transformers; print(f"torch {torch.__version__}, transformers {transformers.__version__}")')"
