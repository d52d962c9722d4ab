#!/usr/bin/env bash
# Runs the test suite on CPU with 8 fake devices (creates .venv and installs on first use).
# Usage: bash launch/test.sh [pytest args]   e.g. bash launch/test.sh -m slow   (the slow end-to-end tests)
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_venv requirements-test.lock
# The default: the CI suite on TEST_WORKERS pytest-xdist workers (2: one a core on the 2-core CI machine; a
# test file stays on one worker, so its module fixtures are built once), printing its slowest tests (its
# budget is 15 minutes on 2 cores). Any arguments replace these: `bash launch/test.sh tests/test_model.py`.
if [ "$#" -eq 0 ]; then set -- -m "not slow" -n "${TEST_WORKERS:-2}" --dist loadfile --durations=30; fi
exec python -m pytest -q -p no:cacheprovider "$@"
