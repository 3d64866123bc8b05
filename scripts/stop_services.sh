#!/usr/bin/env bash
# Stops exactly the processes that start_services.sh recorded in run/*.pid (never by name).
# SIGTERM drains each server: in-flight turns and requests finish (up to its --drain-timeout,
# 30 s by default), then it stops its workers and exits. STOP_TIMEOUT (45 s) later: SIGKILL.
set -uo pipefail
cd "$(dirname "$0")/.."
STOP_TIMEOUT="${STOP_TIMEOUT:-45}"
shopt -s nullglob
for pidfile in run/*.pid; do
    name=$(basename "$pidfile" .pid)
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        deadline=$((SECONDS + STOP_TIMEOUT))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "[stop] $name (pid $pid) did not exit in ${STOP_TIMEOUT} s; killing"
            kill -KILL "$pid"
        fi
        echo "[stop] $name stopped (pid $pid)"
    else
        echo "[stop] $name was not running (stale pid $pid)"
    fi
    rm -f "$pidfile"
done
