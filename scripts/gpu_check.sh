#!/usr/bin/env bash
# One prepared check of a GPU machine, under 8 minutes on one GPU (docs/deployment.md):
#   1. golden parity of both model runtimes (Fun-Audio-Chat, CosyVoice3 TTS LLM + token2wav)
#      on CUDA in float32 and bfloat16 (scripts/gpu_check.py parity);
#   2. random full-size checkpoints (8B Fun-Audio-Chat, real-size CosyVoice3 vocoder; ~17 GB
#      under GPU_CHECK_TMP) and a funaudiochat-engine server on them, then N concurrent
#      /api/chat sessions, each judged: does its reply audio keep real time?
#   3. the --full-size-random benchmarks: runtime_decode.py, tts_runtime.py, token2wav_stream.py.
# Every step has a time cap inside the overall GPU_CHECK_LIMIT (450 s); a step that would not
# fit is reported SKIPPED. Logs and JSON go to GPU_CHECK_OUT (benchmarks/results/gpu_check/).
# Exit: 0 all passed, 1 a step failed or was skipped, 2 not set up, 3 no CUDA GPU.
#   scripts/gpu_check.sh
#   GPU_CHECK_SESSIONS=1,16,48 GPU_CHECK_LIMIT=600 scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-.venv/bin/python}"
OUT="${GPU_CHECK_OUT:-benchmarks/results/gpu_check}"
RND="${GPU_CHECK_TMP:-/tmp/fac-gpu-check}"
SESSIONS="${GPU_CHECK_SESSIONS:-1,8,32}"
LIMIT="${GPU_CHECK_LIMIT:-450}"
PORT="${GPU_CHECK_PORT:-18802}"

if [[ ! -x $PY ]]; then
    echo "gpu_check: FAIL: $PY not found; set up first: GPU=1 scripts/setup.sh" >&2
    exit 2
fi
if ! gpu=$("$PY" -c 'import sys, torch
ok = torch.cuda.is_available()
print(torch.cuda.get_device_name(0) if ok else f"torch {torch.__version__}, CUDA build: {torch.version.cuda}")
sys.exit(0 if ok else 1)' 2>&1); then
    echo "gpu_check: FAIL: no CUDA GPU is visible ($gpu)." >&2
    echo "gpu_check: this check needs an NVIDIA GPU, its driver and a CUDA build of torch" \
         "(GPU=1 scripts/setup.sh); nothing was run." >&2
    exit 3
fi
mkdir -p "$OUT"
echo "gpu_check: $gpu; logs in $OUT; budget ${LIMIT} s"

server_pid=
cleanup() {
    if [[ -n $server_pid ]]; then
        kill -TERM "$server_pid" 2>/dev/null
        wait "$server_pid" 2>/dev/null
    fi
    rm -rf "$RND"
}
trap cleanup EXIT

started=$SECONDS
names=() results=()
# step NAME CAP_S CMD...: runs CMD under min(CAP_S, time left), logs to $OUT/NAME.log
step() {
    local name=$1 cap=$2
    shift 2
    local left=$((LIMIT - (SECONDS - started)))
    ((cap > left)) && cap=$left
    names+=("$name")
    if ((cap < 20)); then
        echo "gpu_check: $name SKIPPED (time budget spent)"
        results+=("SKIPPED (time budget)")
        return 1
    fi
    echo "gpu_check: $name (at most ${cap} s): $*"
    local t0=$SECONDS rc
    if declare -F "$1" >/dev/null; then  # a function of this script bounds itself
        "$@" 2>&1 | tee "$OUT/$name.log"
    else
        timeout --kill-after=10 "$cap" "$@" 2>&1 | tee "$OUT/$name.log"
    fi
    rc=${PIPESTATUS[0]}
    if ((rc == 0)); then
        results+=("PASS ($((SECONDS - t0)) s)")
    elif ((rc == 124 || rc == 137)); then
        results+=("FAIL: over ${cap} s")
    else
        results+=("FAIL: exit $rc ($((SECONDS - t0)) s)")
    fi
    return "$rc"
}

wait_healthy() {
    for _ in $(seq 1 "$1"); do
        if ! kill -0 "$server_pid" 2>/dev/null; then
            echo "server exited; last log lines:"
            tail -20 "$OUT/server.log"
            return 1
        fi
        if "$PY" -c "import json, sys, urllib.request
body = json.load(urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=2))
sys.exit(0 if body['status'] == 'healthy' else 1)" 2>/dev/null; then
            echo "server healthy"
            return 0
        fi
        sleep 1
    done
    echo "server not healthy in $1 s"
    return 1
}

step parity 120 "$PY" -m scripts.gpu_check parity --device cuda --dtypes float32,bfloat16 --json "$OUT/parity.json"

if step random-checkpoints 150 "$PY" -m scripts.gpu_check write-random "$RND"; then
    "$PY" -m web_demo.server.server --engine funaudiochat --model-path "$RND/fun-audio-chat" \
        --vocoder-model-path "$RND/cosyvoice3" --vocoder-speaker-embedding "$RND/speaker.npy" \
        --vocoder-dtype bfloat16 --s2s-device cuda:0 --tts-gpu 0 --no-user-transcripts \
        --host 127.0.0.1 --port "$PORT" --max-sessions 64 --max-batch 32 --log-level WARNING \
        > "$OUT/server.log" 2>&1 &
    server_pid=$!
    if step server-start 180 wait_healthy 170; then
        step sessions 120 "$PY" -m scripts.gpu_check sessions --url "ws://127.0.0.1:$PORT/api/chat" \
            --sessions "$SESSIONS" --seconds 8 --json "$OUT/sessions.json"
    fi
    kill -TERM "$server_pid" 2>/dev/null
    wait "$server_pid" 2>/dev/null
    server_pid=
fi
rm -rf "$RND"  # ~17 GB

step bench-s2s-decode 120 "$PY" benchmarks/runtime_decode.py --full-size-random --device cuda \
    --batch-sizes 1,8,32 --steps 20 --out-dir "$OUT"
step bench-tts-llm 90 "$PY" benchmarks/tts_runtime.py --full-size-random --device cuda --dtype bfloat16 \
    --concurrency 1,8,16 --repeats 1 --json "$OUT/tts_runtime.json"
step bench-token2wav 90 "$PY" benchmarks/token2wav_stream.py --full-size-random --device cuda \
    --dtype bfloat16 --modes cached --durations 5 15 --out "$OUT"

echo
echo "gpu_check summary ($gpu, $((SECONDS - started)) s):"
failed=0
for i in "${!names[@]}"; do
    printf '  %-20s %s\n' "${names[$i]}" "${results[$i]}"
    [[ ${results[$i]} == PASS* ]] || failed=1
done
exit "$failed"
