#!/usr/bin/env bash
# Runs the test suite on CPU with 8 fake devices (creates .venv and installs on first use).
# Usage: bash launch/test.sh [pytest args]   e.g. bash launch/test.sh -m slow   (the slow end-to-end tests)
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_venv requirements-test.lock
# The default: the CI suite on 2 pytest-xdist workers, printing its slowest tests (its budget is 15 minutes on
# 2 cores). A test file stays on one worker, so its module fixtures are built once. On this 2-core machine the
# suite took 1,255 s quiet on 2 workers against 1,545 s serial (one session, two runs). TEST_WORKERS=N sets the
# workers (TEST_WORKERS=0: serial). Any arguments replace these defaults: `bash launch/test.sh tests/test_model.py`.
if [ "$#" -eq 0 ]; then
  set -- -m "not slow" --durations=30
  workers="${TEST_WORKERS:-2}"
  if [ "$workers" != "0" ]; then set -- "$@" -n "$workers" --dist loadfile; fi
fi
exec python -m pytest -q -p no:cacheprovider "$@"
