#!/usr/bin/env bash
# Idempotent set-up of the browser tests: Debian's chromium and a CJK font for its labels
# (apt), and npm's playwright-core to drive it (tests/browser/node_modules, from the lock file).
# No browser is ever downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/apt_packages.sh
ensure_apt_packages setup-browser chromium fonts-wqy-microhei nodejs  # nodejs brings npm

stamp=tests/browser/node_modules/.lock.sha
want=$(sha256sum tests/browser/package-lock.json | cut -d' ' -f1)
if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
    echo "[setup-browser] playwright-core is up to date"
    exit 0
fi
echo "[setup-browser] installing playwright-core (npm ci)"
(cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent)
echo "$want" > "$stamp"
