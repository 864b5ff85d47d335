#!/usr/bin/env bash
# The test suite's fast subset (models, serving, training, audio) under the torch the images install, in a
# virtual environment of its own: the native .venv and CI run the CPU torch of requirements/torch-native.txt,
# the images PyPI's CUDA build pinned in docker/Dockerfile (TORCH_REQUIREMENT); this keeps the second green.
#
# usage: tests/images_torch.sh [PYTEST_ARGS...]      (default: the subset below, -q)
# Environment:
#   PYTHON   interpreter for the environment (default python3.12, the default image's Python (Ubuntu 24.04),
#            when found, else python3)
#   TORCH    torch requirement (default: the Dockerfile's TORCH_REQUIREMENT)
#   VENV     where the environment lives (default ~/.cache/wav2vec2-sagemaker/images-torch-<torch>-py<X.Y>);
#            kept between runs, rebuilt when requirements/ or the pins change
#   WHEELS   a folder of wheels pip may take instead of downloading (e.g. torch and its nvidia-* wheels)
# PyPI's Linux torch wheel is the CUDA build with its nvidia-* wheels (~4.5 GB to download, ~7 GB
# installed); it runs on a CPU. The subset takes ~10 minutes on 2 cores.
set -euo pipefail
root="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
cd "$root"

torch_req=${TORCH:-$(sed -n 's/^ARG TORCH_REQUIREMENT=//p' docker/Dockerfile)}
[ -n "$torch_req" ] || { echo "images_torch: no TORCH_REQUIREMENT in docker/Dockerfile; set TORCH" >&2; exit 2; }
python=${PYTHON:-$(command -v python3.12 || command -v python3)}
pyver=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
venv=${VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/wav2vec2-sagemaker/images-torch-${torch_req#torch==}-py${pyver}}

# The subset: audio decoding, CTC decoding, the model-side code and its convolution rewrite, the HTTP server
# end to end, the training program end to end (every data format, two processes with gloo).
subset=(tests/test_audio.py tests/test_ctc.py tests/test_convs.py tests/test_serve_model.py tests/test_serve.py
        tests/test_train_run.py tests/test_train_formats.py tests/test_train_distributed.py)

stamp="$venv/.images-torch.sha256"
want=$( (echo "$torch_req"; cat requirements/serve.txt requirements/train.txt requirements/lm.txt docker/constraints.txt) | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[images_torch] building $venv with $("$python" --version 2>&1) and $torch_req"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
  [ -n "${WHEELS:-}" ] && pip+=(--find-links "$WHEELS")
  # The images' order: torch first (its own dependencies as constraints.txt pins them), then each
  # program's requirements with the torch layer frozen.
  "${pip[@]}" -c docker/constraints.txt "$torch_req"
  "$venv/bin/python" -m pip freeze >"$venv/torch-freeze.txt"
  "${pip[@]}" -c "$venv/torch-freeze.txt" -c docker/constraints.txt \
    -r requirements/serve.txt -r requirements/train.txt pytest==9.2.0 hypothesis==6.170.15
  # Beam search + KenLM as the images install it: on its own, without dependencies (requirements/lm.txt says why).
  "${pip[@]}" --no-deps --require-hashes -r requirements/lm.txt
  echo "$want" >"$stamp"
fi
"$venv/bin/python" -c 'import sys, torch, transformers; print(f"[images_torch] Python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}")'
# KenLM's lmplz/build_binary (the training job's LM step): the native ones setup.sh built, as the training image
# carries its own; they do not depend on Python or torch.
if [ -z "${KENLM_BIN:-}" ] && [ -x .venv/bin/lmplz ]; then export KENLM_BIN="$root/.venv/bin"; fi
if [ $# -eq 0 ]; then
  set -- "${subset[@]}" -q
fi
exec "$venv/bin/python" -m pytest "$@"
