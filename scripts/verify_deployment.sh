#!/usr/bin/env bash
# Checks the running deployment and prints a pass/fail table; exits 1 if any check fails.
#
#   scripts/verify_deployment.sh
#
# For every service recorded in RUN_DIR (run/) by start_services.sh or start_vllm_services.sh:
#   port     the port is listening (ss)
#   process  the PID file's process is alive (and is the one started), with its workers
#   health   GET /health answers 200 (healthy or degraded), and which engine runs, loudly
#   request  one real request: S2S a spoken WebSocket turn (scripts/test_deployment.py), ASR the
#            plan's `curl -X POST .../api/transcribe -F audio=@... -F language=中文 -F hotwords=...`
#            (a WAV from tests/fixtures/speech/), TTS the plan's `curl -X POST .../api/synthesize`
#            (JSON text + speaker_id 中文女), a vLLM Whisper the plan's OpenAI-style
#            `curl .../v1/audio/transcriptions`
# and once: GPU memory (nvidia-smi; without one it says none: the CPU engines run).
# Services started another way (docker compose): SERVICES="s2s asr tts" checks those on
# S2S_PORT/ASR_PORT/TTS_PORT (8002/8003/8004) without the process check. VERIFY_HOST
# (localhost) is where the requests go; VERIFY_WAV the question and the transcription input.
set -uo pipefail
# shellcheck source=start_services.sh
source "$(dirname "$0")/start_services.sh"  # cd to the repository; meta_get, running, describe_engine
set +e
VERIFY_HOST="${VERIFY_HOST:-localhost}"
VERIFY_WAV="${VERIFY_WAV:-tests/fixtures/speech/hello.wav}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

rows=()
failures=0
row() {  # check, service, PASS|FAIL|INFO|SKIP, detail
    rows+=("$1"$'\t'"$2"$'\t'"$3"$'\t'"$4")
    [[ $3 == FAIL ]] && failures=$((failures + 1))
    printf '[verify] %-8s %-9s %-4s %s\n' "$1" "$2" "$3" "$4"
}

json_field() {  # file, python expression over `j` -> its value (empty on any error)
    "$PY" - "$1" "$2" 2>/dev/null <<'PY'
import json, sys
j = json.load(open(sys.argv[1], encoding="utf-8"))
print(eval(sys.argv[2], {"j": j}))
PY
}

# ---- which services -----------------------------------------------------------------------
names=() kinds=() ports=() recorded=()
shopt -s nullglob
metas=()
for name in s2s asr tts; do [[ -f $RUN_DIR/$name.meta ]] && metas+=("$RUN_DIR/$name.meta"); done
for meta in "$RUN_DIR"/*.meta; do [[ " ${metas[*]} " == *" $meta "* ]] || metas+=("$meta"); done
for meta in "${metas[@]}"; do
    name=$(basename "$meta" .meta)
    names+=("$name"); kinds+=("$(meta_get "$name" kind)"); ports+=("$(meta_get "$name" port)")
    recorded+=(1)
done
if ((${#names[@]} == 0)); then
    if [[ -z ${SERVICES:-} ]]; then
        echo "[verify] no services recorded in $RUN_DIR/: start them with scripts/start_services.sh" \
             "(or set SERVICES=\"s2s asr tts\" for services started another way)" >&2
        exit 1
    fi
    for name in $SERVICES; do
        case $name in
            s2s) port=${S2S_PORT:-8002} ;;
            asr) port=${ASR_PORT:-8003} ;;
            tts) port=${TTS_PORT:-8004} ;;
            *) echo "[verify] unknown service '$name' in SERVICES (s2s, asr, tts)" >&2; exit 2 ;;
        esac
        names+=("$name"); kinds+=("$name"); ports+=("$port"); recorded+=(0)
    done
fi

# ---- GPU ------------------------------------------------------------------------------------
if command -v nvidia-smi >/dev/null; then
    if gpus=$(nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader 2>&1); then
        while IFS= read -r gpu; do row gpu - INFO "$gpu"; done <<<"$gpus"
    else
        row gpu - FAIL "nvidia-smi failed: ${gpus//$'\n'/ }"
    fi
else
    row gpu - INFO "none (no nvidia-smi): the services run on the CPU"
fi
have_curl=1
command -v curl >/dev/null || have_curl=0

# ---- per service ----------------------------------------------------------------------------
check_port() {  # name, port
    local listening
    if command -v ss >/dev/null; then
        listening=$(ss -Htln "sport = :$2" 2>/dev/null)
    else
        port_open "$2" && listening=yes
    fi
    if [[ -n $listening ]]; then row port "$1" PASS ":$2 listening"; else row port "$1" FAIL ":$2 not listening"; fi
}

check_process() {  # name, recorded
    if (($2 == 0)); then
        row process "$1" SKIP "no PID file (not started by start_services.sh)"
        return
    fi
    local pid count
    pid=$(cat "$RUN_DIR/$1.pid" 2>/dev/null)
    if running "$1"; then
        count=$(grep -lzxF "FAC_SERVICE_ID=$(meta_get "$1" service_id)" /proc/[0-9]*/environ 2>/dev/null | wc -l)
        row process "$1" PASS "pid $pid alive ($count processes: the server and its workers)"
    else
        row process "$1" FAIL "pid ${pid:-?} is not running (log: $(meta_get "$1" log))"
    fi
}

check_health() {  # name, kind, port
    local code
    code=$(health_code "$3")
    if [[ $code != 200 ]]; then
        row health "$1" FAIL "GET /health -> ${code:-no answer}"
        return
    fi
    row health "$1" PASS "$(describe_engine "$2" "$3")"
}

health_code() {  # port -> the HTTP status of GET /health (000 when nothing answers)
    "$PY" - "$1" 2>/dev/null <<'PY' || echo 000
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=10) as r:
        print(r.status)
except urllib.error.HTTPError as exc:
    print(exc.code)
PY
}

request_s2s() {  # name, port: one spoken turn, the way the browser sends it
    local out
    if out=$("$PY" scripts/test_deployment.py --host "$VERIFY_HOST" --port "$2" --wav "$VERIFY_WAV" \
             --out "$work/reply.wav" --timeout 60 2>&1); then
        row request "$1" PASS "WebSocket turn: $(grep -E '^(reply text|first audio):' <<<"$out" \
            | sed 's/ \{2,\}/ /g' | paste -sd ';' | sed 's/;/; /g')"
    else
        row request "$1" FAIL "WebSocket turn: $(tail -1 <<<"$out")"
    fi
}

transcribe() {  # port, language -> HTTP status; the body in $work/asr.json (the plan's curl)
    curl -sS -o "$work/asr.json" -w '%{http_code}' -X POST "http://$VERIFY_HOST:$1/api/transcribe" \
        -F "audio=@$VERIFY_WAV" \
        -F "language=$2" \
        -F "hotwords=Fun-Audio-Chat,语音助手" 2>"$work/curl.err"
}

request_asr() {  # name, port
    local code text lang=中文
    code=$(transcribe "$2" "$lang")
    # An English-only stand-in (ASR_STAND_IN=whisper-tiny.en) refuses 中文 by name: ask in English.
    if [[ $code == 400 && $(json_field "$work/asr.json" 'j["error"]["param"]') == language ]]; then
        lang=英文
        code=$(transcribe "$2" "$lang")
    fi
    text=$(json_field "$work/asr.json" 'j["text"] if j.get("success") is True else ""')
    if [[ $code == 200 && -n $text ]]; then
        row request "$1" PASS "POST /api/transcribe (language=$lang): \"$text\""
    else
        row request "$1" FAIL "POST /api/transcribe -> $code $(head -c 300 "$work/asr.json" 2>/dev/null)$(cat "$work/curl.err")"
    fi
}

request_vllm_asr() {  # name, port: the plan's OpenAI-style transcription
    local code text model
    model=$(meta_get "$1" model)
    code=$(curl -sS -o "$work/asr.json" -w '%{http_code}' -X POST "http://$VERIFY_HOST:$2/v1/audio/transcriptions" \
        -F "file=@$VERIFY_WAV" \
        -F "model=${model:-openai/whisper-large-v3}" \
        -F "language=zh" 2>"$work/curl.err")
    text=$(json_field "$work/asr.json" 'j["text"]')
    if [[ $code == 200 && -n $text ]]; then
        row request "$1" PASS "POST /v1/audio/transcriptions: \"$text\""
    else
        row request "$1" FAIL "POST /v1/audio/transcriptions -> $code $(head -c 300 "$work/asr.json" 2>/dev/null)$(cat "$work/curl.err")"
    fi
}

synthesize() {  # port, speaker -> HTTP status; the body in $work/output.wav (the plan's curl)
    curl -sS -w '%{http_code}' -X POST "http://$VERIFY_HOST:$1/api/synthesize" \
        -H "Content-Type: application/json" \
        -d "{\"text\": \"你好，我是语音助手。\", \"speaker_id\": \"$2\"}" \
        -o "$work/output.wav" 2>"$work/curl.err"
}

request_tts() {  # name, port
    local code speaker=中文女 seconds
    code=$(synthesize "$2" "$speaker")
    # A CosyVoice3 release may ship no 中文女 (a 404 naming the known speakers): use one it has.
    if [[ $code == 404 ]]; then
        speaker=$(curl -s "http://$VERIFY_HOST:$2/api/speakers" | "$PY" -c \
            'import json, sys; print((json.load(sys.stdin).get("speakers") or [""])[0])' 2>/dev/null)
        [[ -n $speaker ]] && code=$(synthesize "$2" "$speaker")
    fi
    # The non-streamed answer is JSON: {"audio": <base64 WAV>, "sample_rate", "duration", "success"}
    seconds=$(json_field "$work/output.wav" 'j["duration"] if j.get("success") is True and j["duration"] > 0 \
        and __import__("base64").b64decode(j["audio"])[:4] == b"RIFF" else ""')
    if [[ $code == 200 && -n $seconds ]]; then
        row request "$1" PASS "POST /api/synthesize (speaker_id=$speaker): ${seconds} s of 24 kHz WAV"
    else
        row request "$1" FAIL "POST /api/synthesize -> $code $(head -c 300 "$work/output.wav" 2>/dev/null)$(cat "$work/curl.err")"
    fi
}

for i in "${!names[@]}"; do
    name=${names[$i]} kind=${kinds[$i]} port=${ports[$i]}
    check_port "$name" "$port"
    check_process "$name" "${recorded[$i]}"
    check_health "$name" "$kind" "$port"
    if [[ $kind != s2s ]] && ((have_curl == 0)); then
        row request "$name" FAIL "curl is not installed (apt-get install curl)"
        continue
    fi
    case $kind in
        s2s) request_s2s "$name" "$port" ;;
        asr) request_asr "$name" "$port" ;;
        tts) request_tts "$name" "$port" ;;
        vllm-asr) request_vllm_asr "$name" "$port" ;;
        *) row request "$name" SKIP "unknown kind '$kind'" ;;
    esac
done

# ---- the table ----------------------------------------------------------------------------
echo
echo "=== deployment check ==="
printf '%-8s %-9s %-6s %s\n' check service result detail
printf '%-8s %-9s %-6s %s\n' ----- ------- ------ ------
for r in "${rows[@]}"; do
    IFS=$'\t' read -r check service result detail <<<"$r"
    printf '%-8s %-9s %-6s %s\n' "$check" "$service" "$result" "$detail"
done
if ((failures)); then
    echo "=== $failures check(s) FAILED ==="
    for i in "${!names[@]}"; do
        log=$(meta_get "${names[$i]}" log)
        [[ -n $log && -f $log ]] && { echo "--- last lines of $log"; tail -5 "$log"; }
    done
    exit 1
fi
echo "=== all checks passed ==="
