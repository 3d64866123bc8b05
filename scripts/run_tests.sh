#!/usr/bin/env bash
# Sets up if needed, then runs the whole test suite (no GPU, no network needed).
#   scripts/run_tests.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
