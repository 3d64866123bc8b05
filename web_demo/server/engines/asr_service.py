"""What the ASR service serves, built before anything loads.

Without --models: one model, chosen from --model-path (`resolve_asr_service`): Fun-ASR-Nano
weights -> the funasr worker; a CTranslate2 Whisper directory -> the faster-whisper worker;
no weights -> the CPU stand-in, said loudly.

With --models: the models a models.json registry describes, in one AsrModels. Each entry
becomes one engine: a remote one (OpenAI transcriptions or Qwen3 chat) or a local worker
(funasr, faster-whisper) on the service's --device/--workers. A model with a remote engine
or with fallbacks is served through a FailoverAsrEngine (a circuit breaker and a background
probe per engine), so a vLLM that is down at start leaves the service degraded and comes
back by itself. An engine that is a model of its own and another's fallback is one engine
(one worker, one connection pool), shared.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from web_demo.server.config import AsrServiceConfig, WorkerConfig
from web_demo.server.devices import nvidia_driver_present
from web_demo.server.engines.asr_failover import FailoverAsrEngine
from web_demo.server.engines.asr_models import AsrModels, SharedAsrEngine
from web_demo.server.engines.asr_registry import ModelSpec, Registry, RegistryError, RemoteTarget
from web_demo.server.engines.base import AsrEngine
from web_demo.server.engines.long_audio import ChunkedAsrEngine
from web_demo.server.workers.whisper_models import STAND_INS


@dataclass(frozen=True)
class AsrChoice:
    """What the ASR service serves, decided from --model-path before anything loads."""
    engine: str  # "faster-whisper" | "funasr"
    model_id: str  # the id clients send as `model` and /health reports
    model_dir: str  # a directory, or a stand-in name the worker resolves
    stand_in: bool
    why: str = ""


def fun_asr_nano_present(path: Path) -> bool:
    """A Fun-ASR-Nano (or -MLT-Nano) release directory: config.yaml + model.pt."""
    return (path / "config.yaml").is_file() and (path / "model.pt").is_file()


def ctranslate2_whisper_present(path: Path) -> bool:
    return (path / "model.bin").is_file() and (path / "config.json").is_file()


def resolve_asr_service(cfg: AsrServiceConfig) -> AsrChoice:
    path = cfg.model_path
    if fun_asr_nano_present(path):
        return AsrChoice("funasr", path.name, str(path), stand_in=False)
    if ctranslate2_whisper_present(path):
        return AsrChoice("faster-whisper", path.name, str(path), stand_in=False)
    return AsrChoice("faster-whisper", cfg.stand_in, cfg.stand_in, stand_in=True,
                     why=f"no Fun-ASR-Nano weights at {path}")


def asr_devices(cfg: AsrServiceConfig) -> list[str]:
    """One entry per worker process: each --device, --workers times; cuda without a driver is cpu."""
    devices = [d.strip() for d in cfg.device.split(",") if d.strip()] or ["auto"]
    if not nvidia_driver_present():
        devices = ["cpu" if d.startswith("cuda") else d for d in devices]
    return [d for d in devices for _ in range(cfg.workers)]


def describe_asr_choice(cfg: AsrServiceConfig) -> str:
    """One loud line: the real model, or which CPU stand-in runs and why."""
    choice, devices = resolve_asr_service(cfg), ",".join(asr_devices(cfg))
    asked = "" if devices == cfg.device or cfg.device == "auto" else f" (asked {cfg.device}: no GPU)"
    if not choice.stand_in:
        return f"{choice.engine} {choice.model_id} (REAL MODEL from {cfg.model_path}) on {devices}{asked}"
    return (f"faster-whisper {choice.model_id}: CPU STAND-IN, NOT Fun-ASR-Nano -- {choice.why}; "
            f"on {devices}{asked}")


# AsrChoice.engine -> the worker handler that serves it
ASR_HANDLERS = {"faster-whisper": "web_demo.server.workers.asr_worker:FasterWhisperHandler",
                "funasr": "web_demo.server.workers.funasr_worker:FunAsrNanoHandler"}


def build_asr_service_engine(cfg: AsrServiceConfig, workers: WorkerConfig) -> AsrEngine:
    """The ASR service's engine, named by its model id; builds, loads nothing."""
    choice = resolve_asr_service(cfg)
    return chunked(_worker_engine(choice.model_id, choice.engine, choice.model_dir, cfg, workers), cfg)


def chunked(engine: AsrEngine, cfg: AsrServiceConfig) -> AsrEngine:
    """Every served model takes long audio: cut at silences into chunks it can hear."""
    return ChunkedAsrEngine(engine, max_chunk_s=cfg.max_chunk_s, max_concurrency=cfg.chunk_concurrency,
                            vad_threshold=cfg.vad_threshold, min_silence_s=cfg.min_silence_s)


def _worker_engine(name: str, engine: str, model_dir: str, cfg: AsrServiceConfig,
                   workers: WorkerConfig) -> AsrEngine:
    from web_demo.server.engines.local import WorkerAsrEngine

    init: dict[str, object] = {"model_dir": model_dir}
    if engine == "faster-whisper" and cfg.max_batch is not None:
        init["max_batch"] = cfg.max_batch
    return WorkerAsrEngine(name=name, handler=ASR_HANDLERS[engine], init_kwargs=init,
                           devices=asr_devices(cfg), cfg=workers)


def build_registry_models(registry: Registry, cfg: AsrServiceConfig, workers: WorkerConfig, *,
                          probe_interval_s: float = 5.0) -> AsrModels:
    engines = {spec.id: SharedAsrEngine(_engine(spec, cfg, workers)) for spec in registry.models.values()}
    served: dict[str, AsrEngine] = {}
    for spec in registry.models.values():
        group = [engines[spec.id], *(engines[other] for other in spec.fallbacks)]
        served[spec.id] = chunked(
            FailoverAsrEngine(name=spec.id, engines=group, probe_interval_s=probe_interval_s)
            if spec.remote is not None or spec.fallbacks else engines[spec.id], cfg)
    return AsrModels(served, default=registry.default,
                     languages={spec.id: spec.languages for spec in registry.models.values()})


def _engine(spec: ModelSpec, cfg: AsrServiceConfig, workers: WorkerConfig) -> AsrEngine:
    if spec.remote is not None:
        return _remote_engine(spec.id, spec.remote)
    return _worker_engine(spec.id, spec.local_engine, _local_model_dir(spec, cfg), cfg, workers)


def _remote_engine(name: str, target: RemoteTarget) -> AsrEngine:
    from web_demo.server.engines.remote_asr import OpenAITranscriptionsEngine, Qwen3ChatAsrEngine

    kind = OpenAITranscriptionsEngine if target.api == "openai-transcriptions" else Qwen3ChatAsrEngine
    api_key = os.environ.get(target.api_key_env) if target.api_key_env else None
    return kind(name=name, base_url=target.base_url, model=target.model, api_key=api_key,
                timeout_s=target.timeout_s)


def _local_model_dir(spec: ModelSpec, cfg: AsrServiceConfig) -> str:
    """The entry's model directory, checked now: a wrong path fails at start-up, not at load."""
    where = f"models.json entry {spec.id!r} ({spec.engine}, embedded)"
    if spec.local_engine == "faster-whisper":
        offline = spec.offline or cfg.stand_in
        if offline in STAND_INS or ctranslate2_whisper_present(Path(offline)):
            return offline
        raise RegistryError(f"{where}: models.offline {offline!r} is neither a CTranslate2 Whisper "
                            f"directory nor a stand-in ({', '.join(STAND_INS)})")
    if spec.offline is None or not fun_asr_nano_present(Path(spec.offline)):
        raise RegistryError(f"{where}: models.offline {spec.offline!r} is not a Fun-ASR-Nano "
                            "directory (config.yaml + model.pt); give it a vllm_host to use a "
                            "remote vLLM instead")
    return str(Path(spec.offline).resolve())
