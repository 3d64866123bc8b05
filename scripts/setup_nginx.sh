#!/usr/bin/env bash
# Idempotent set-up of the nginx replicas test (tests/e2e/test_nginx_replicas.py): Debian's
# nginx (apt, as root; otherwise prints the exact apt-get command). The test runs nginx from
# its own config in a temporary directory, so no system nginx service is ever started: when
# the machine has no /usr/sbin/policy-rc.d (containers usually have one), a temporary one
# stops the package's postinst from starting nginx on port 80, and is removed afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

if dpkg -s nginx >/dev/null 2>&1; then
    echo "[setup-nginx] nginx is installed ($(nginx -v 2>&1))"
    exit 0
fi
policy=/usr/sbin/policy-rc.d
if [[ $(id -u) -eq 0 && ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi
source scripts/apt_packages.sh
ensure_apt_packages setup-nginx nginx
echo "[setup-nginx] done ($(nginx -v 2>&1))"
