#!/usr/bin/env bash
# The test command (README's second command; .ci/run calls it): set up, then run the whole suite.
# Extra arguments go to pytest, e.g. ./test.sh -k serve -x
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
exec .venv/bin/python -m pytest tests "$@"
