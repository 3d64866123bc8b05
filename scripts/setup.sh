#!/usr/bin/env bash
# Idempotent set-up: system packages for the CPU engines, then .venv with pinned packages and
# this project installed editable (pyproject.toml).
#   scripts/setup.sh            CPU path (what CI and the tests use)
#   GPU=1 scripts/setup.sh      also installs requirements-gpu.txt (CUDA torch, onnxruntime-gpu
#                               in place of onnxruntime; see that file)
#   VLLM=1 scripts/setup.sh     also makes .venv-vllm with the CUDA build of vLLM (its own
#                               environment: scripts/setup_vllm_cpu.sh with VLLM_GPU=1)
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${VLLM:-}" ]]; then
    VLLM_GPU=1 scripts/setup_vllm_cpu.sh
fi

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
source scripts/apt_packages.sh
ensure_apt_packages setup espeak-ng flite libsndfile1

stamp=.venv/.requirements.sha
# pyproject.toml is in the stamp: the editable install below reads it (packages, metadata).
want=$(cat requirements.txt ${GPU:+requirements-gpu.txt} pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ -x .venv/bin/python && -f $stamp && $(cat "$stamp") == "$want" ]]; then
    echo "[setup] .venv is up to date"
    exit 0
fi
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
echo "[setup] installing Python packages into .venv"
if [[ -n "${GPU:-}" ]]; then
    # onnxruntime and onnxruntime-gpu write the same package directory: keep only the GPU one
    # (removing either deletes files the other needs, hence the forced reinstall after it).
    reinstall=()
    if .venv/bin/pip show -q onnxruntime 2>/dev/null; then
        .venv/bin/pip uninstall -q -y onnxruntime
        reinstall=(--force-reinstall)
    fi
    .venv/bin/pip install -q --disable-pip-version-check -r <(grep -v '^onnxruntime==' requirements.txt) \
        -r requirements-gpu.txt
    if ((${#reinstall[@]})); then
        .venv/bin/pip install -q --disable-pip-version-check --no-deps "${reinstall[@]}" \
            "$(grep '^onnxruntime-gpu' requirements-gpu.txt)"
    fi
    .venv/bin/python -c 'import sys, torch; sys.exit(0 if torch.version.cuda else
        f"[setup] torch {torch.__version__} is not a CUDA build (a local CPU wheel won?): "
        "reinstall it from PyPI alone: .venv/bin/pip --isolated install --force-reinstall --no-deps torch==2.13.0")'
else
    if .venv/bin/pip show -q onnxruntime-gpu 2>/dev/null; then  # back from GPU=1
        .venv/bin/pip uninstall -q -y onnxruntime-gpu
        .venv/bin/pip install -q --disable-pip-version-check --no-deps --force-reinstall \
            "$(grep '^onnxruntime==' requirements.txt)"
    fi
    .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
fi
# The project itself, editable, so scripts/ and benchmarks/ import web_demo and utils from
# anywhere; --no-deps because the pins above are the dependencies.
echo "[setup] installing the project (editable)"
.venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
rm -rf ./*.egg-info  # build metadata setuptools leaves in the tree; the install keeps its own copy
echo "$want" > "$stamp"
echo "[setup] done"
