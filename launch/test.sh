#!/usr/bin/env bash
# Runs the test suite on CPU with 8 fake devices (creates .venv and installs on first use).
# Usage: bash launch/test.sh [pytest args]   e.g. bash launch/test.sh -m slow   (the slow end-to-end tests)
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_venv requirements-test.lock
# The default: the CI suite, printing its slowest tests (its budget is 15 minutes on 2 cores). TEST_WORKERS=N
# runs it on N pytest-xdist workers (a test file stays on one worker, so its module fixtures are built once):
# on this 2-core machine 2 workers took 1,255 s quiet against 1,545 s serial (one session, two runs). Any arguments replace
# these defaults: `bash launch/test.sh tests/test_model.py`.
if [ "$#" -eq 0 ]; then
  set -- -m "not slow" --durations=30
  if [ -n "${TEST_WORKERS:-}" ]; then set -- "$@" -n "$TEST_WORKERS" --dist loadfile; fi
fi
exec python -m pytest -q -p no:cacheprovider "$@"
