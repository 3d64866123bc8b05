#!/usr/bin/env bash
# Stops exactly the processes that start_services.sh recorded in run/*.pid (never by name).
set -uo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob
for pidfile in run/*.pid; do
    name=$(basename "$pidfile" .pid)
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -INT "$pid"  # graceful: the server stops its worker processes itself
        for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "[stop] $name (pid $pid) did not exit in 15 s; killing"
            kill -KILL "$pid"
        fi
        echo "[stop] $name stopped (pid $pid)"
    else
        echo "[stop] $name was not running (stale pid $pid)"
    fi
    rm -f "$pidfile"
done
