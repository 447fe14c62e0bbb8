#!/usr/bin/env bash
# The whole test suite: set up ./.venv if needed, then run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
exec .venv/bin/python -m pytest "$@"
