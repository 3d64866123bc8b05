#!/usr/bin/env bash
# Idempotent set-up of the nginx replicas test (tests/e2e/test_nginx_replicas.py): Debian's
# nginx (apt, as root; otherwise prints the exact apt-get command). The test runs nginx from
# its own config in a temporary directory, so no system nginx service is ever started: when
# the machine has no /usr/sbin/policy-rc.d (containers usually have one), a temporary one
# stops the package's postinst from starting nginx on port 80, and is removed afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(nginx)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]} == 0)); then
    echo "[setup-nginx] nginx is installed ($(nginx -v 2>&1))"
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "[setup-nginx] MISSING system packages: ${missing[*]}" >&2
    echo "[setup-nginx] run:  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
policy=/usr/sbin/policy-rc.d
temporary_policy=""
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    temporary_policy=$policy
    trap 'rm -f "$temporary_policy"' EXIT
fi
echo "[setup-nginx] installing system packages: ${missing[*]}"
apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
echo "[setup-nginx] done ($(nginx -v 2>&1))"
