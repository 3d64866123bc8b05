#!/usr/bin/env bash
# Starts the services in the background (nohup). PID files go to run/, logs to logs/.
#   scripts/start_services.sh                 S2S server on :8002 (engine auto)
#   S2S_PORT=9002 ENGINE=cascade scripts/start_services.sh --llm-url http://host:8000/v1
# Extra arguments are passed to the S2S server. Stop with scripts/stop_services.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
mkdir -p run logs

S2S_PORT="${S2S_PORT:-8002}"
ENGINE="${ENGINE:-auto}"
HOST="${HOST:-0.0.0.0}"

start() {  # name, then the command
    local name=$1; shift
    local pidfile="run/$name.pid"
    if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        echo "[start] $name already running (pid $(cat "$pidfile"))"
        return
    fi
    nohup "$@" >"logs/$name.log" 2>&1 &
    echo $! >"$pidfile"
    echo "[start] $name started (pid $!), log: logs/$name.log"
}

health_state() {  # port -> one word: ok, loading, failed, dead, down (no answer) or http-NNN
    .venv/bin/python - "$1" 2>/dev/null <<'PY' || echo down
import json, sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2):
        print("ok")
except urllib.error.HTTPError as exc:  # 503 {"status": "loading"} while the models load
    try:
        body = json.loads(exc.read())
    except ValueError:
        body = None
    status = body.get("status") if isinstance(body, dict) else None
    print(status if status in ("loading", "failed", "dead") else f"http-{exc.code}")
except OSError:
    print("down")
PY
}

wait_healthy() {  # name, port[, seconds]: until /health answers 200, the server fails, or the deadline
    local name=$1 port=$2 limit=${3:-${HEALTH_TIMEOUT_S:-600}}
    local started=$SECONDS state=down
    local deadline=$((started + limit)) next_report=$((started + 10))
    while ((SECONDS < deadline)); do
        state=$(health_state "$port")
        case $state in
            ok)
                echo "[start] $name healthy after $((SECONDS - started)) s: http://127.0.0.1:$port/health"
                return 0 ;;
            failed|dead)
                echo "[start] $name reports status '$state'; last log lines:" >&2
                tail -20 "logs/$name.log" >&2
                return 1 ;;
        esac
        if ! kill -0 "$(cat "run/$name.pid")" 2>/dev/null; then
            echo "[start] $name EXITED; last log lines:" >&2
            tail -20 "logs/$name.log" >&2
            return 1
        fi
        if ((SECONDS >= next_report)); then
            echo "[start] waiting for $name: $state, $((SECONDS - started)) s of $limit s"
            next_report=$((SECONDS + 10))
        fi
        sleep 1
    done
    echo "[start] $name not healthy after $limit s (last: $state); last log lines:" >&2
    tail -20 "logs/$name.log" >&2
    return 1
}

start s2s .venv/bin/python -m web_demo.server.server --host "$HOST" --port "$S2S_PORT" --engine "$ENGINE" "$@"
wait_healthy s2s "$S2S_PORT"
grep -m1 "engine:" "logs/s2s.log" || true
echo
echo "  S2S (WebSocket): ws://$HOST:$S2S_PORT/api/chat"
echo "  Web demo:        http://$HOST:$S2S_PORT/"
echo "  Health:          http://$HOST:$S2S_PORT/health"
echo "  Try it:          .venv/bin/python scripts/test_deployment.py --port $S2S_PORT"
