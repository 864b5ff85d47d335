#!/usr/bin/env bash
# Run the serving image as SageMaker does: the model in local_test/test_dir/model mounted under /opt/ml,
# argument `serve`, port 8080. Ctrl-C (or docker stop) sends SIGTERM: in-flight requests finish first.
# Usage: local_test/serve_local.sh [IMAGE]     (default wav2vec2-serve:latest)
# Environment: PORT (host port, default 8080); DOCKER (client); DOCKER_RUN_ARGS (extra `docker run`
#              arguments, e.g. "-e MODEL_SERVER_WORKERS=2").
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
image=${1:-wav2vec2-serve:latest}
opt_ml=$here/test_dir
docker=${DOCKER:-docker}

[ -f "$opt_ml/model/config.json" ] || {
  echo "serve_local: no model in $opt_ml/model; train one first (local_test/train_local.sh)" >&2; exit 1; }
gpus=()
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && gpus=(--gpus all)
# shellcheck disable=SC2086
exec "$docker" run --rm "${gpus[@]}" ${DOCKER_RUN_ARGS:-} \
  -p "${PORT:-8080}:8080" -v "$opt_ml:/opt/ml" "$image" serve
