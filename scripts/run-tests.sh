#!/usr/bin/env bash
# The whole test suite: set up ./.venv if needed, then run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
# Two pytest workers (one per core of the reference machine), each test file on one worker so that a file's
# framework imports and fixtures are shared; one framework thread per worker so the two do not oversubscribe
# the cores. Files go to the workers in collection order, the heavy ones first (tests/conftest.py), not xdist's
# most-tests-first order. UNIDL_TEST_WORKERS=0 runs everything in this one process.
export UNIDL_NUM_THREADS="${UNIDL_NUM_THREADS:-1}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
workers="${UNIDL_TEST_WORKERS:-2}"
if [ "$workers" = "0" ]; then
  exec .venv/bin/python -m pytest "$@"
fi
exec .venv/bin/python -m pytest -n "$workers" --dist loadfile --no-loadscope-reorder "$@"
