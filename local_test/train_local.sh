#!/usr/bin/env bash
# Run the training image as SageMaker does: local_test/test_dir mounted at /opt/ml, argument `train`.
# Channels go in test_dir/input/data/<channel>/ (quickstart.sh fills train, test and model); settings in
# test_dir/input/config/hyperparameters.json. The model lands in test_dir/model, metrics in test_dir/output.
# Usage: local_test/train_local.sh [IMAGE]     (default wav2vec2-train:latest)
# Environment: KEEP_CHECKPOINTS=1 keeps test_dir/checkpoints (resume, like a restarted spot job);
#              DOCKER (client), DOCKER_RUN_ARGS (extra `docker run` arguments).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
image=${1:-wav2vec2-train:latest}
opt_ml=$here/test_dir
docker=${DOCKER:-docker}

[ -d "$opt_ml/input/data/train" ] || {
  echo "train_local: no training channel in $opt_ml/input/data/train; make one with" >&2
  echo "  .venv/bin/python local_test/make_dataset.py $opt_ml/input/data" >&2
  exit 1
}
# SageMaker starts each job with empty model/ and output/; checkpoints/ only holds what an earlier attempt
# of the same job saved. find -delete: no error when a folder is already empty.
mkdir -p "$opt_ml/model" "$opt_ml/output" "$opt_ml/checkpoints"
find "$opt_ml/model" "$opt_ml/output" -mindepth 1 -delete
[ "${KEEP_CHECKPOINTS:-0}" = 1 ] || find "$opt_ml/checkpoints" -mindepth 1 -delete

gpus=()
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && gpus=(--gpus all)
# shellcheck disable=SC2086  # DOCKER_RUN_ARGS is a list of words
exec "$docker" run --rm "${gpus[@]}" --shm-size 1g ${DOCKER_RUN_ARGS:-} \
  -e TRAINING_JOB_NAME=local-test -v "$opt_ml:/opt/ml" "$image" train
