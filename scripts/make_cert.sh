#!/usr/bin/env bash
# A self-signed certificate for serving HTTPS/WSS on a LAN (browsers give the microphone only
# to secure origins: https://, or http://localhost). Names and addresses to cover are the
# arguments (default: this machine's host name, its first address, localhost, 127.0.0.1).
#   scripts/make_cert.sh [--out DIR] [NAME_OR_IP ...]
#   python -m web_demo.server.server --ssl-certfile certs/cert.pem --ssl-keyfile certs/key.pem
# Browsers warn about a self-signed certificate once per device; accept it (or install
# certs/cert.pem as trusted) and the page gets the microphone.
set -euo pipefail
cd "$(dirname "$0")/.."
out=certs
if [[ "${1:-}" == "--out" ]]; then out=$2; shift 2; fi
names=("$@")
if [[ ${#names[@]} -eq 0 ]]; then
    names=("$(hostname)" localhost 127.0.0.1)
    lan=$(hostname -I 2>/dev/null | awk '{print $1}')
    [[ -n "$lan" ]] && names+=("$lan")
fi
san=""
for n in "${names[@]}"; do
    if [[ "$n" =~ ^[0-9.]+$ || "$n" == *:* ]]; then san+="IP:$n,"; else san+="DNS:$n,"; fi
done
mkdir -p "$out"
umask 077  # the private key is readable by its owner only
openssl req -x509 -newkey rsa:2048 -nodes -days 825 -sha256 -subj "/CN=${names[0]}" \
    -addext "subjectAltName=${san%,}" -keyout "$out/key.pem" -out "$out/cert.pem" 2>/dev/null
chmod 644 "$out/cert.pem"
echo "wrote $out/cert.pem and $out/key.pem for: ${names[*]}"
