# syntax=docker/dockerfile:1
# Two images from one file (docs/deployment.md, "Containers"):
#   docker build --target cpu  -t fun-audio-chat:cpu  .   CPU torch 2.13.0 (requirements.txt)
#   docker build --target cuda -t fun-audio-chat:cuda .   + requirements-gpu.txt (CUDA 13 torch
#                                                           wheels from PyPI, onnxruntime-gpu)
# The CUDA image needs no CUDA base image: PyPI's torch 2.13.0 brings its CUDA 13.0 libraries
# as wheels, so the host needs only an NVIDIA driver >= 580 and the NVIDIA container toolkit.
# Weights are never baked in: mount pretrained_models/ (scripts/download_models.sh fills it).
# One image runs any of the three servers; the command picks which (docker-compose.yml).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- system packages every stage shares ------------------------------------------------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
# espeak-ng and flite: the CPU stand-in TTS; libsndfile1: soundfile
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        espeak-ng flite libsndfile1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app

# -- dependencies, CPU -----------------------------------------------------------------------
FROM base AS deps-cpu
COPY requirements.txt ./
RUN python -m venv /opt/venv && pip install -r requirements.txt

# -- dependencies, CUDA: requirements.txt without onnxruntime (onnxruntime-gpu replaces it) --
FROM base AS deps-cuda
COPY requirements.txt requirements-gpu.txt ./
RUN python -m venv /opt/venv \
    && grep -v '^onnxruntime==' requirements.txt > /tmp/requirements-cpu-part.txt \
    && pip install -r /tmp/requirements-cpu-part.txt -r requirements-gpu.txt \
    && python -c "import torch; assert torch.version.cuda, torch.__version__; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"

# -- the application on top of either dependency stage ---------------------------------------
FROM base AS app-cpu
COPY --from=deps-cpu /opt/venv /opt/venv

FROM base AS app-cuda
COPY --from=deps-cuda /opt/venv /opt/venv

FROM app-cpu AS cpu
COPY . /app
RUN pip install --no-deps -e . && rm -rf ./*.egg-info
EXPOSE 8002 8003 8004
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=5 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\", \"8002\")}/health', timeout=4)"
CMD ["python", "-m", "web_demo.server.server", "--port", "8002", "--host", "0.0.0.0"]

FROM app-cuda AS cuda
COPY . /app
RUN pip install --no-deps -e . && rm -rf ./*.egg-info
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
EXPOSE 8002 8003 8004
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=5 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\", \"8002\")}/health', timeout=4)"
CMD ["python", "-m", "web_demo.server.server", "--model-path", "pretrained_models/Fun-Audio-Chat-8B", \
     "--port", "8002", "--tts-gpu", "0", "--host", "0.0.0.0"]
