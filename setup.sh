#!/usr/bin/env bash
# Set up everything the programs and tests need, natively; safe to re-run (skips what is in place).
#   - system tools: espeak-ng (synthetic speech), sox, libopus0 (Ogg/Opus live streams); installed with apt-get when missing
#   - .venv at the repo root with every Python dependency pinned (requirements/), Python 3.11 as the images
#   - .venv-launch: the launcher's environment (requirements/launch.txt: SageMaker SDK v3 and the
#     bidirectional-stream client), on the first Python >= 3.12 found (README, Launch on SageMaker)
#   - KenLM (requirements/lm.txt): its Python module and its estimation tools lmplz and build_binary
#     (into .venv/bin), compiled from KenLM's PyPI source; the compilers and headers this needs are
#     installed with apt-get when missing, and only while something of KenLM is missing
# Environment: PYTHON (default python3), LAUNCH_PYTHON_BIN (the launcher's interpreter), TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cpu to
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

# KenLM: what its build needs, only while its module (at the pinned version) or its tools are missing.
kenlm_version=$(sed -n 's/^kenlm==\([^ ]*\).*/\1/p' requirements/lm.txt)
kenlm_module_ok() {  # every pin of requirements/lm.txt installed, and kenlm importable
  [ -x .venv/bin/python ] && .venv/bin/python - requirements/lm.txt <<'PY' 2>/dev/null
import importlib.metadata as m, re, sys
import kenlm, pyctcdecode  # noqa: F401
pins = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s]+)", open(sys.argv[1]).read(), re.M)
sys.exit(any(m.version(name) != version for name, version in pins))
PY
}
kenlm_tools_ok() {
  [ -x .venv/bin/lmplz ] && [ -x .venv/bin/build_binary ] && [ "$(cat .venv/.kenlm-tools 2>/dev/null)" = "$kenlm_version" ]
}
if ! kenlm_module_ok || ! kenlm_tools_ok; then
  build_deps=(g++ make cmake zlib1g-dev libbz2-dev liblzma-dev libboost-program-options-dev libboost-system-dev
              libboost-thread-dev libboost-test-dev)
  "$python" -c 'import os, sys, sysconfig; sys.exit(not os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    || build_deps+=(python3-dev)
  missing=()
  for pkg in "${build_deps[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    if ! command -v apt-get >/dev/null 2>&1; then
      echo "setup: building KenLM needs ${missing[*]} (no apt-get here: install the equivalents)" >&2; exit 1
    fi
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    log "installing KenLM's build tools: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || { echo "setup: Python >= 3.10 is needed ($python is $("$python" --version 2>&1))" >&2; exit 1; }
  log "creating .venv with $("$python" --version 2>&1)"
  "$python" -m venv .venv
fi

# Re-install only when a requirements file changed since the last successful install.
stamp=.venv/.requirements.sha256
want=$(ls requirements/*.txt | grep -v "/launch.txt$" | xargs cat | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing Python dependencies into .venv"
  pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "${pip[@]}" --index-url "$TORCH_INDEX_URL" -r requirements/torch-native.txt
  else
    "${pip[@]}" -r requirements/torch-native.txt
  fi
  "${pip[@]}" -r requirements/dev.txt
  "${pip[@]}" -r requirements/docs.txt  # the documentation site (mkdocs.yml); its build is a test
  echo "$want" >"$stamp"
fi
if ! kenlm_module_ok; then
  # On its own and without dependencies: see requirements/lm.txt (pyctcdecode's numpy<2 declaration).
  log "installing pyctcdecode and KenLM $kenlm_version into .venv (KenLM compiles: a few minutes, once)"
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --require-hashes -r requirements/lm.txt
fi
if ! kenlm_tools_ok; then
  log "building KenLM's lmplz and build_binary $kenlm_version from its PyPI source into .venv/bin"
  kenlm_tmp=$(mktemp -d)
  trap 'rm -rf "$kenlm_tmp"' EXIT
  grep '^kenlm==' requirements/lm.txt >"$kenlm_tmp/kenlm.txt"
  .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps --no-binary kenlm --require-hashes \
    -d "$kenlm_tmp" -r "$kenlm_tmp/kenlm.txt"
  tar -xzf "$kenlm_tmp/kenlm-$kenlm_version.tar.gz" -C "$kenlm_tmp"
  # Boost linked statically: the tools then need only the C/C++ runtime, zlib, bzip2 and xz.
  cmake -S "$kenlm_tmp/kenlm-$kenlm_version" -B "$kenlm_tmp/build" -DCMAKE_BUILD_TYPE=Release \
    -DBoost_USE_STATIC_LIBS=ON >"$kenlm_tmp/cmake.log" 2>&1 || { cat "$kenlm_tmp/cmake.log" >&2; exit 1; }
  cmake --build "$kenlm_tmp/build" --target lmplz build_binary -j "$(nproc)" >"$kenlm_tmp/build.log" 2>&1 \
    || { tail -40 "$kenlm_tmp/build.log" >&2; exit 1; }
  install -m 755 "$kenlm_tmp/build/bin/lmplz" "$kenlm_tmp/build/bin/build_binary" .venv/bin/
  echo "$kenlm_version" >.venv/.kenlm-tools
fi
# The launcher's environment. Its bidirectional-stream client declares Python >= 3.12; Debian bookworm's apt
# has 3.11 only, and `uv python install` downloads from GitHub, so: LAUNCH_PYTHON_BIN, else the first
# python3.12/python3.13 on PATH or among pyenv's installed versions (this project's machines have pyenv's 3.12).
launch_python=""
for candidate in "${LAUNCH_PYTHON_BIN:-}" python3.12 python3.13 \
    "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/3.1[23]*/bin/python3; do
  [ -n "$candidate" ] || continue
  if "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then
    launch_python=$candidate; break
  fi
done
if [ -z "$launch_python" ]; then
  echo "setup: the launcher needs Python >= 3.12 (none found: set LAUNCH_PYTHON_BIN)" >&2; exit 1
fi
if [ -x .venv-launch/bin/python ] && ! .venv-launch/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
  rm -rf .venv-launch  # an older interpreter's environment
fi
if [ ! -x .venv-launch/bin/python ]; then
  log "creating .venv-launch with $("$launch_python" --version 2>&1) (the launcher: SageMaker SDK v3)"
  "$launch_python" -m venv .venv-launch
fi
launch_stamp=.venv-launch/.requirements.sha256
launch_want=$(sha256sum requirements/launch.txt | cut -d' ' -f1)
if [ "$(cat "$launch_stamp" 2>/dev/null)" != "$launch_want" ]; then
  log "installing the launcher's dependencies into .venv-launch"
  .venv-launch/bin/python -m pip install -q --disable-pip-version-check -r requirements/launch.txt
  echo "$launch_want" >"$launch_stamp"
fi
log "launcher: $(.venv-launch/bin/python -c 'import sys, importlib.metadata as m; print("Python", sys.version.split()[0] + ", sagemaker", m.version("sagemaker"))')"
log "ready: $(.venv/bin/python -c 'import torch, transformers; print(f"torch {torch.__version__}, transformers {transformers.__version__}")')"
