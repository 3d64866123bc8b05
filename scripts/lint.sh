#!/usr/bin/env bash
# Sets up if needed, then runs the lint and type checks configured in pyproject.toml
# (ruff over the whole tree; mypy over web_demo, strict, and utils, relaxed). .ci/run runs it
# before the tests; it is separate from scripts/run_tests.sh so that running a few tests
# while a change is half done is not blocked by a lint finding.
#   scripts/lint.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
status=0
.venv/bin/ruff check . || status=1
.venv/bin/mypy || status=1  # run both, so one run reports every finding
exit "$status"
