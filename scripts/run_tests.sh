#!/usr/bin/env bash
# Sets up if needed (the project's .venv, .venv-vllm for the real-vLLM test, chromium and
# playwright-core for the browser tests), then runs the whole test suite (no GPU; no network
# once set up).
#   scripts/run_tests.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/setup_vllm_cpu.sh
scripts/setup_browser.sh
scripts/setup_nginx.sh
exec .venv/bin/python -m pytest "$@"
