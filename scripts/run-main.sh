#!/usr/bin/env bash
# The main job: set up ./.venv if needed, then train on the default backend (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
exec .venv/bin/python -m unidl "${@:-train}"
