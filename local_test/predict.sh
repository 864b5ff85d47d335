#!/usr/bin/env bash
# Send one file to the local endpoint (serve_local.sh) and print the answer.
# Usage: local_test/predict.sh FILE [CONTENT_TYPE]    (default content type audio/wav)
# Environment: PORT (default 8080).
set -euo pipefail
[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: $0 FILE [CONTENT_TYPE]" >&2; exit 2; }
[ -r "$1" ] || { echo "predict: cannot read $1" >&2; exit 1; }
exec curl --silent --show-error --fail-with-body --data-binary "@$1" -H "Content-Type: ${2:-audio/wav}" \
  "http://127.0.0.1:${PORT:-8080}/invocations"
