"""What the TTS service serves, decided and built before anything loads.

--model-path holding a CosyVoice3 model (release layout: cosyvoice3.yaml + llm.pt; test
layout: llm_config.json) -> the CosyVoice3 worker on each --device; nothing there -> the
espeak-ng CPU stand-in, said loudly. --use-vllm is checked here so that a server that cannot
honour it refuses to start instead of silently running without it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from web_demo.server.config import TtsServiceConfig, WorkerConfig
from web_demo.server.devices import gpu_available, nvidia_driver_present
from web_demo.server.engines.base import TtsEngine

TTS_HANDLERS = {"cosyvoice3": "web_demo.server.workers.cosyvoice3_tts_worker:CosyVoice3TtsHandler",
                "espeak-ng": "web_demo.server.workers.tts_worker:EspeakHandler"}


@dataclass(frozen=True)
class TtsChoice:
    engine: str  # "cosyvoice3" | "espeak-ng"
    model_id: str  # what /health and /v1/models report
    stand_in: bool
    why: str = ""


def cosyvoice3_present(path: Path) -> bool:
    return (path / "cosyvoice3.yaml").is_file() or (path / "llm_config.json").is_file()


def resolve_tts_service(cfg: TtsServiceConfig) -> TtsChoice:
    if cfg.engine == "espeak-ng":
        return TtsChoice("espeak-ng", "espeak-ng", stand_in=True, why="--engine espeak-ng")
    if cosyvoice3_present(cfg.model_path):
        return TtsChoice("cosyvoice3", cfg.model_path.name, stand_in=False)
    if cfg.engine == "cosyvoice3":
        raise ValueError(f"--engine cosyvoice3: no CosyVoice3 model at {cfg.model_path} "
                         "(cosyvoice3.yaml + llm.pt, flow.pt, hift.pt, ...)")
    return TtsChoice("espeak-ng", "espeak-ng", stand_in=True, why=f"no CosyVoice3 model at {cfg.model_path}")


def tts_devices(cfg: TtsServiceConfig) -> list[str]:
    """One entry per worker process; cuda without a driver is cpu (said in describe_tts_choice)."""
    devices = [d.strip() for d in cfg.device.split(",") if d.strip()] or ["auto"]
    if not nvidia_driver_present():
        devices = ["cpu" if d.startswith("cuda") else d for d in devices]
    return devices


def check_vllm(cfg: TtsServiceConfig, choice: TtsChoice) -> None:
    """--use-vllm is honoured or refused, never ignored."""
    if not cfg.use_vllm:
        return
    if choice.engine != "cosyvoice3":
        raise ValueError(f"--use-vllm needs a CosyVoice3 model; {choice.why}")
    if not gpu_available():
        raise ValueError("--use-vllm needs a CUDA GPU (vLLM's CosyVoice3 path is CUDA-only); none is visible")
    if importlib.util.find_spec("vllm") is None:
        raise ValueError("--use-vllm: vllm is not installed in this environment (pip install vllm)")


def describe_tts_choice(cfg: TtsServiceConfig) -> str:
    choice, devices = resolve_tts_service(cfg), ",".join(tts_devices(cfg))
    if not choice.stand_in:
        return f"cosyvoice3 {choice.model_id} (REAL MODEL from {cfg.model_path}) on {devices}"
    return f"espeak-ng: CPU STAND-IN, NOT CosyVoice3 -- {choice.why}"


def build_tts_service_engine(cfg: TtsServiceConfig, workers: WorkerConfig) -> TtsEngine:
    """The service's engine, named by its model id; builds, loads nothing."""
    from web_demo.server.engines.local import WorkerTtsEngine

    choice = resolve_tts_service(cfg)
    check_vllm(cfg, choice)
    if choice.engine == "espeak-ng":
        return WorkerTtsEngine(name=choice.model_id, handler=TTS_HANDLERS["espeak-ng"],
                               init_kwargs={"voice": cfg.espeak_voice}, cfg=workers)
    return WorkerTtsEngine(name=choice.model_id, handler=TTS_HANDLERS["cosyvoice3"],
                           init_kwargs=cosyvoice3_init(cfg, str(cfg.model_path), cfg.default_speaker),
                           devices=tts_devices(cfg), cfg=workers)


def cosyvoice3_init(cfg: TtsServiceConfig, model_dir: str, default_speaker: str | None) -> dict[str, object]:
    """The CosyVoice3 worker's init kwargs (CosyVoice3TtsHandler) from the service's flags."""
    return {"model_dir": model_dir, "dtype": "bfloat16" if cfg.dtype == "auto" else cfg.dtype,
            "speakers_dir": str(cfg.speakers_dir) if cfg.speakers_dir else None,
            "default_speaker": default_speaker, "max_batch": cfg.max_batch,
            "max_concurrent": cfg.max_concurrent, "use_vllm": cfg.use_vllm}
