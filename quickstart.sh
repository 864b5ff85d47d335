#!/usr/bin/env bash
# README's first command: from a fresh machine to a model trained in the training container and served from
# the serving container, on synthetic speech, with WER/CER on held-out voices. Re-running reuses what exists
# (environment, engine, base image, image layers, data set, trained model).
#   1. ./setup.sh: .venv (pinned) + espeak-ng and sox
#   2. a Docker engine (docker/ensure-engine.sh: installs docker.io and starts it when run as root)
#   3. both images: from NVIDIA's CUDA base when it can be pulled, else from a Debian base made here
#   4. the synthetic speech set in local_test/test_dir/input/data/{train,test} (local_test/make_dataset.py)
#   5. training in the training container (local_test/train_local.sh; tiny model from
#      local_test/tiny_model/config.json as the `model` channel; settings in test_dir/input/config)
#   6. serving from the serving container, transcribing every held-out clip, WER and CER: greedy, and beam
#      search with the KenLM 3-gram the training job built (lm_order's default) side by side
# Usage: ./quickstart.sh [--retrain]
# Environment: PORT (host port for the endpoint, default 8080); BASE_IMAGE (skip the pull-or-make choice);
#   TORCH_REQUIREMENT and TORCH_WHEELS (torch for the images; default: the images' CUDA torch, or with the
#   Debian base a CPU torch wheel found in /opt/wheels); CA_BUNDLE (extra CA for a TLS-intercepting proxy).
set -euo pipefail
root=$(cd "$(dirname "$0")" && pwd)
cd "$root"
source docker/common.sh

retrain=false
case ${1:-} in
  --retrain) retrain=true ;;
  "") ;;
  -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [--retrain]" >&2; exit 2 ;;
esac

say() { printf '\n[quickstart] %s\n' "$*"; }
declare -A took
step_start=$SECONDS
timed() { took[$1]=$((SECONDS - step_start)); step_start=$SECONDS; }

opt_ml=$root/local_test/test_dir
data=$opt_ml/input/data
port=${PORT:-8080}
cuda_base=nvidia/cuda:12.8.1-base-ubuntu24.04
local_base=local/debian:bookworm

say "1/6 Python environment and espeak-ng (./setup.sh)"
./setup.sh
timed setup

say "2/6 Docker engine"
DOCKER=$(docker/ensure-engine.sh)
export DOCKER
timed engine

say "3/6 images wav2vec2-train and wav2vec2-serve"
build=(--local)
if [ -n "${BASE_IMAGE:-}" ]; then
  base=$BASE_IMAGE
elif "$DOCKER" image inspect "$cuda_base" >/dev/null 2>&1 || timeout 600 "$DOCKER" pull -q "$cuda_base" >/dev/null 2>&1; then
  base=$cuda_base
else
  say "cannot pull $cuda_base (no registry access?): building from a Debian bookworm base made here with debootstrap"
  docker/make-base.sh "$local_base"
  base=$local_base
fi
build+=(--base-image "$base")
torch=${TORCH_REQUIREMENT:-}
wheels=${TORCH_WHEELS:-}
if [ -z "$torch" ] && [ "$base" = "$local_base" ]; then
  # bookworm's Python is 3.11: a local CPU torch wheel for it saves downloading the multi-GB CUDA build.
  wheel=$(compgen -G "${wheels:-/opt/wheels}/torch-*+cpu-cp311-*x86_64.whl" | sort | tail -1 || true)
  if [ -n "$wheel" ]; then
    torch=torch==$(basename "$wheel" | cut -d- -f2)
    wheels=$(dirname "$wheel")
  fi
fi
[ -z "$torch" ] || build+=(--torch "$torch")
[ -z "$wheels" ] || build+=(--wheels "$wheels")
ca=${CA_BUNDLE:-}
[ -n "$ca" ] || [ ! -r /etc/ssl/certs/ca-certificates.crt ] || ca=/etc/ssl/certs/ca-certificates.crt
[ -z "$ca" ] || build+=(--ca-bundle "$ca")
echo "[quickstart] base $base; torch ${torch:-torch==2.10.0 (CUDA 12.8, from PyPI)}"
./build_and_push.sh "${build[@]}" >/tmp/quickstart-build.log 2>&1 \
  || { tail -40 /tmp/quickstart-build.log; echo "quickstart: image build failed (log: /tmp/quickstart-build.log)" >&2; exit 1; }
grep '^\[build\]' /tmp/quickstart-build.log
for t in train serve; do
  echo "[quickstart] wav2vec2-$t: $("$DOCKER" run --rm --entrypoint cat "wav2vec2-$t:latest" /opt/venv/torch-version.txt)"
done
timed images

say "4/6 synthetic speech set"
if [ -s "$data/train/manifest.jsonl" ] && [ -s "$data/test/manifest.jsonl" ]; then
  echo "[quickstart] reusing $data/{train,test}"
else
  .venv/bin/python local_test/make_dataset.py "$data"
fi
mkdir -p "$data/model"
cp local_test/tiny_model/config.json "$data/model/config.json"
echo "[quickstart] $(wc -l <"$data/train/manifest.jsonl") training and $(wc -l <"$data/test/manifest.jsonl") held-out utterances"
timed data

say "5/6 training in the container (local_test/train_local.sh; a few minutes on CPU)"
# Training stops after max_train_seconds: on a busy machine fewer steps fit, and the model learns less.
echo "[quickstart] $(nproc) CPU cores, load average $(cut -d' ' -f1 /proc/loadavg); settings: $(tr -d '\n ' <"$opt_ml/input/config/hyperparameters.json")"
if ! $retrain && [ -f "$opt_ml/model/config.json" ] && compgen -G "$opt_ml/model/*.safetensors" >/dev/null; then
  echo "[quickstart] reusing the model in $opt_ml/model (./quickstart.sh --retrain trains again)"
else
  local_test/train_local.sh wav2vec2-train:latest
fi
timed train

say "6/6 serving from the container (local_test/serve_local.sh) and transcribing the held-out clips"
server_log=/tmp/quickstart-serve.log
PORT=$port local_test/serve_local.sh wav2vec2-serve:latest >"$server_log" 2>&1 &
server=$!
# docker run forwards SIGTERM to the container: the server drains and exits.
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 240); do
  curl -fsS "http://127.0.0.1:$port/ping" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { cat "$server_log"; echo "quickstart: the serving container exited" >&2; exit 1; }
  sleep 0.5
done
curl -fsS "http://127.0.0.1:$port/ping" >/dev/null || { cat "$server_log"; echo "quickstart: /ping never answered" >&2; exit 1; }
timed serve_start
PORT=$port .venv/bin/python - "$data/test" "$opt_ml/model" <<'EOF'
"""Send every held-out clip to /invocations as audio/wav; print a few transcripts, then WER and CER: greedy
decoding (decoder=greedy) and, for a model trained with its language model, beam search + LM (the default)."""
import json, os, sys, time, urllib.request
from pathlib import Path

import jiwer

from common.text import DEFAULT_CHARS_TO_IGNORE, normalize

test, model = Path(sys.argv[1]), Path(sys.argv[2])
url = f"http://127.0.0.1:{os.environ['PORT']}/invocations"
rows = [json.loads(line) for line in (test / "manifest.jsonl").open()]
decoders = ["greedy", "beam"] if (model / "language_model").is_dir() else ["greedy"]
refs, hyps, start = [], {d: [] for d in decoders}, time.monotonic()
for row in rows:
    for decoder in decoders:
        req = urllib.request.Request(url, data=(test / row["audio"]).read_bytes(), headers={
            "Content-Type": "audio/wav", "X-Amzn-SageMaker-Custom-Attributes": f"decoder={decoder}"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            hyps[decoder].append(json.load(resp)["text"])
    refs.append(normalize(row["text"], DEFAULT_CHARS_TO_IGNORE))  # as training normalises transcripts
seconds = time.monotonic() - start
last = decoders[-1]
for ref, hyp in list(zip(refs, hyps[last]))[:3]:
    print(f"  reference: {ref}\n  heard:     {hyp}")
names = {"greedy": "greedy", "beam": "beam search + the job's LM"}
print(f"[quickstart] {len(rows)} held-out clips (voices not seen in training), each decoded {len(decoders)} "
      f"way(s), in {seconds:.1f} s: " + "; ".join(
          f"{names[d]}: WER {jiwer.wer(refs, hyps[d]):.3f}, CER {jiwer.cer(refs, hyps[d]):.3f}" for d in decoders))
EOF
timed transcribe

say "done"
for k in setup engine images data train serve_start transcribe; do printf '  %-12s %4d s\n' "$k" "${took[$k]}"; done
echo "  model:   $opt_ml/model   (what SageMaker would pack into model.tar.gz)"
echo "  metrics: $opt_ml/output/data/metrics.json and training.png"
echo "  images:  wav2vec2-train:latest, wav2vec2-serve:latest (push: ./build_and_push.sh --help)"
