#!/usr/bin/env bash
# Download the deployment plan's models, skipping what is present and verifying what came.
#   scripts/download_models.sh                       Fun-Audio-Chat-8B, Fun-CosyVoice3-0.5B-2512,
#                                                    Fun-ASR-Nano-2512 into pretrained_models/
#   scripts/download_models.sh --only asr,tts        selected models (keys: --list)
#   scripts/download_models.sh --only qwen3-asr      the vLLM containers' Qwen3-ASR 1.7B + 0.6B
#   scripts/download_models.sh --source ms           from ModelScope instead of Hugging Face
#   scripts/download_models.sh --dry-run             print what it would do; no network
# Mirrors: HF_ENDPOINT (e.g. https://hf-mirror.com) for Hugging Face, MODELSCOPE_ENDPOINT
# (older modelscope: MODELSCOPE_DOMAIN) for ModelScope. HF_TOKEN is passed through.
# MODELS_DIR (pretrained_models) moves the target directory.
# Downloads resume: an interrupted run leaves partial files that the next run continues
# (huggingface_hub and modelscope both do this); both CLIs draw progress bars.
# A model counts as present when scripts/verify_models.py finds it complete (config and every
# weight shard there, nothing empty, no partial files); anything else is downloaded again.
# Qwen3-ASR and Whisper go to the hub cache (~/.cache/huggingface, the compose file's
# volume), where the vLLM containers' `--model Qwen/Qwen3-ASR-1.7B` finds them; with
# --source ms to ~/.cache/modelscope/hub/Qwen/... (set VLLM_USE_MODELSCOPE=True for vLLM).
set -euo pipefail
cd "$(dirname "$0")/.."

SOURCE="${SOURCE:-hf}"
MODELS_DIR="${MODELS_DIR:-pretrained_models}"
HF_HUB_PIN=huggingface_hub==0.36.2  # what transformers 4.52.3 resolves to in .venv
MODELSCOPE_PIN=modelscope==1.40.2   # what funasr 1.4.16 resolves to in .venv
DRY_RUN=
only=()

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
while (($#)); do
    case "$1" in
        --source) SOURCE="${2:?--source needs hf or ms}"; shift 2 ;;
        --source=*) SOURCE="${1#*=}"; shift ;;
        --only) only+=(--only "${2:?--only needs a model list}"); shift 2 ;;
        --only=*) only+=(--only "${1#*=}"); shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        --list) LIST=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "[download] unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $SOURCE == hf || $SOURCE == ms ]] || { echo "[download] --source must be hf or ms, not '$SOURCE'" >&2; exit 2; }

PY=.venv/bin/python
[[ -x $PY ]] || PY=python3
verify=("$PY" scripts/verify_models.py)
if [[ -n ${LIST:-} ]]; then
    exec "${verify[@]}" list
fi
plan=$("${verify[@]}" plan --source "$SOURCE" --models-dir "$MODELS_DIR" "${only[@]}")

if [[ $SOURCE == hf ]]; then
    echo "[download] source: Hugging Face (${HF_ENDPOINT:-https://huggingface.co}; set HF_ENDPOINT for a mirror)"
else
    echo "[download] source: ModelScope (${MODELSCOPE_ENDPOINT:-${MODELSCOPE_DOMAIN:-https://www.modelscope.cn}}; set MODELSCOPE_ENDPOINT for a mirror)"
fi
[[ -n $DRY_RUN ]] && echo "[download] dry run: nothing is downloaded or installed"

# The download CLI, found or installed into .venv the first time something must be fetched.
cli=()
find_cli() {
    ((${#cli[@]})) && return 0
    local names pin
    if [[ $SOURCE == hf ]]; then names=(huggingface-cli hf); pin=$HF_HUB_PIN; else names=(modelscope); pin=$MODELSCOPE_PIN; fi
    for name in "${names[@]}"; do
        if [[ -x .venv/bin/$name ]]; then cli=(".venv/bin/$name"); return 0; fi
    done
    for name in "${names[@]}"; do
        if command -v "$name" >/dev/null; then cli=("$(command -v "$name")"); return 0; fi
    done
    if [[ -n $DRY_RUN ]]; then
        echo "[download] would install $pin into .venv (no ${names[0]} found)"
        cli=("${names[0]}")
        return 0
    fi
    [[ -x .venv/bin/pip ]] || { echo "[download] no ${names[0]} and no .venv: run scripts/setup.sh first, or pip install $pin" >&2; exit 1; }
    echo "[download] installing $pin into .venv"
    .venv/bin/pip install -q --disable-pip-version-check "$pin"
    for name in "${names[@]}"; do
        if [[ -x .venv/bin/$name ]]; then cli=(".venv/bin/$name"); return 0; fi
    done
    echo "[download] $pin installed but no ${names[*]} in .venv/bin" >&2
    exit 1
}

failed=0
while IFS=$'\t' read -r key repo dest kind state; do
    [[ -n $key ]] || continue
    if [[ $state == unavailable* ]]; then
        echo "[download] $key: ${state#unavailable: }" >&2
        failed=1
        continue
    fi
    if [[ $state == present ]]; then
        echo "[download] $key ($repo): present and complete in $dest, skipping"
        continue
    fi
    echo "[download] $key ($repo): $state"
    find_cli
    if [[ $SOURCE == ms ]]; then
        cmd=("${cli[@]}" download --model "$repo" --local_dir "$dest")
    elif [[ $dest == hf-cache ]]; then
        cmd=("${cli[@]}" download "$repo")  # into the hub cache; prints the snapshot path
    else
        cmd=("${cli[@]}" download "$repo" --local-dir "$dest")
    fi
    if [[ -n $DRY_RUN ]]; then
        echo "[download]   would run: ${cmd[*]}"
        echo "[download]   would verify: ${verify[*]} check ${dest/#hf-cache/<snapshot path>} --kind $kind"
        continue
    fi
    echo "[download]   ${cmd[*]}"
    if [[ $dest == hf-cache ]]; then
        # progress bars go to stderr; the last stdout line is the snapshot directory
        if ! dest=$("${cmd[@]}" | tail -n 1) || [[ -z $dest ]]; then
            echo "[download] $key: download failed (run again to resume)" >&2
            failed=1
            continue
        fi
    elif ! "${cmd[@]}"; then
        echo "[download] $key: download failed (run again to resume)" >&2
        failed=1
        continue
    fi
    if "${verify[@]}" check "$dest" --kind "$kind"; then
        echo "[download] $key: verified"
    else
        echo "[download] $key: INCOMPLETE after download (run again to resume)" >&2
        failed=1
    fi
done <<< "$plan"

if ((failed)); then
    echo "[download] some models are missing or incomplete (see above)" >&2
    exit 1
fi
echo "[download] done"
