#!/usr/bin/env bash
# Idempotent set-up of the browser tests: Debian's chromium and a CJK font for its labels
# (apt), and npm's playwright-core to drive it (tests/browser/node_modules, from the lock file).
# No browser is ever downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(chromium fonts-wqy-microhei nodejs)  # nodejs brings npm
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        echo "[setup-browser] installing system packages: ${missing[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "[setup-browser] MISSING system packages: ${missing[*]}" >&2
        echo "[setup-browser] run:  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
fi

stamp=tests/browser/node_modules/.lock.sha
want=$(sha256sum tests/browser/package-lock.json | cut -d' ' -f1)
if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
    echo "[setup-browser] playwright-core is up to date"
    exit 0
fi
echo "[setup-browser] installing playwright-core (npm ci)"
(cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent)
echo "$want" > "$stamp"
