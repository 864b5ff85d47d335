#!/usr/bin/env bash
# The test command (README's second command; .ci/run calls it): set up, then run the whole suite.
# Extra arguments go to pytest, e.g. ./test.sh -k serve -x
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
# The launcher's in-process SDK tests (tests/test_launcher_sdk_*.py) run in the launcher's own environment,
# .venv-launch (Python 3.12, SageMaker SDK v3); everything else in .venv. pytest's 5 (nothing selected, e.g.
# by -k) counts as a failure only when neither run selected anything.
status=0
.venv/bin/python -m pytest tests --ignore-glob='tests/test_launcher_sdk_*' "$@" || status=$?
launch_status=0
.venv-launch/bin/python -m pytest tests/test_launcher_sdk_*.py "$@" || launch_status=$?
if [ "$status" -eq 5 ] && [ "$launch_status" -ne 5 ]; then status=0; fi
if [ "$launch_status" -eq 5 ] && [ "$status" -eq 0 ]; then launch_status=0; fi
exit $((status ? status : launch_status))
