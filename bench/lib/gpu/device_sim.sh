#!/usr/bin/env bash
# A stand-in for the lent GPU machine's Python, to rehearse bench/gpu_check there before any device time:
# Python 3.12 with the packages KINDS.md lists for it (torch, transformers 5.17.0, accelerate 1.15.0, numpy,
# pandas, pyarrow, matplotlib, werkzeug, jinja2, click, ...) and WITHOUT flask, gunicorn, soundfile, soxr,
# jiwer, datasets or cffi, then `bench/gpu_check --rehearse` with that interpreter, so the carried wheels
# (.gpu_check/wheels, from --prepare) are installed and imported exactly as there.
#
# usage: bench/lib/gpu/device_sim.sh [gpu_check args...]     (default: --rehearse)
# Environment: PYTHON (a Python 3.12; default python3.12), SIM_VENV (default ~/.cache/wav2vec2-sagemaker/
# device-sim-py3.12), TORCH (default torch==2.10.0: PyPI's Linux wheel, the CUDA build, runs on the CPU; the
# machine itself has 2.11.0+cu130), WHEELS (a folder of wheels pip may use instead of downloading).
set -euo pipefail
root="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../.." && pwd)"
python=${PYTHON:-python3.12}
venv=${SIM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/wav2vec2-sagemaker/device-sim-py3.12}
torch_req=${TORCH:-torch==2.10.0}
"$python" -c 'import sys; assert sys.version_info[:2] == (3, 12), sys.version' \
  || { echo "device_sim: $python is not Python 3.12 (set PYTHON)" >&2; exit 2; }
# What the lent machine holds, at the versions KINDS.md gives where it gives one.
packages=("$torch_req" transformers==5.17.0 accelerate==1.15.0 tokenizers==0.23.2 safetensors==0.8.0
          huggingface_hub==1.33.0 numpy pandas pyarrow matplotlib werkzeug jinja2 markupsafe click packaging
          requests pyyaml psutil regex tqdm filelock fsspec xxhash aiohttp typing-extensions)
stamp="$venv/.device-sim"
if [ "$(cat "$stamp" 2>/dev/null)" != "${packages[*]}" ]; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
  pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
  [ -n "${WHEELS:-}" ] && pip+=(--find-links "$WHEELS")
  "${pip[@]}" "${packages[@]}"
  echo "${packages[*]}" >"$stamp"
fi
# The point of the stand-in: none of what travels as wheels is installed.
"$venv/bin/python" - <<'PY'
import importlib.util, sys
present = [m for m in ("flask", "gunicorn", "soundfile", "soxr", "jiwer", "datasets", "cffi")
           if importlib.util.find_spec(m)]
if present:
    sys.exit(f"device_sim: the stand-in must not have {present}")
print(f"device_sim: Python {sys.version.split()[0]} without flask, gunicorn, soundfile, soxr, jiwer, datasets, cffi")
PY
cd "$root"
[ $# -eq 0 ] && set -- --rehearse
exec "$venv/bin/python" bench/gpu_check "$@"
