"""The models a models.json registry describes, built into the ASR service's AsrModels.

Each entry becomes one engine: a remote one (OpenAI transcriptions or Qwen3 chat) or a local
worker (funasr, faster-whisper) on the service's --device/--workers. A model with a remote
engine or with fallbacks is served through a FailoverAsrEngine (a circuit breaker and a
background probe per engine), so a vLLM that is down at start leaves the service degraded
and comes back by itself. An engine that is a model of its own and another's fallback is
one engine (one worker, one connection pool), shared. Builds only: nothing loads here.
"""

from __future__ import annotations

import os
from pathlib import Path

from web_demo.server.config import AsrServiceConfig, WorkerConfig
from web_demo.server.engines.asr_failover import FailoverAsrEngine
from web_demo.server.engines.asr_models import AsrModels, SharedAsrEngine
from web_demo.server.engines.asr_registry import ModelSpec, Registry, RegistryError, RemoteTarget
from web_demo.server.engines.base import AsrEngine
from web_demo.server.engines.builders import (
    ASR_HANDLERS,
    asr_devices,
    ctranslate2_whisper_present,
    fun_asr_nano_present,
)
from web_demo.server.workers.whisper_models import STAND_INS


def build_registry_models(registry: Registry, cfg: AsrServiceConfig, workers: WorkerConfig, *,
                          probe_interval_s: float = 5.0) -> AsrModels:
    engines = {spec.id: SharedAsrEngine(_engine(spec, cfg, workers)) for spec in registry.models.values()}
    served: dict[str, AsrEngine] = {}
    for spec in registry.models.values():
        group = [engines[spec.id], *(engines[other] for other in spec.fallbacks)]
        served[spec.id] = (FailoverAsrEngine(name=spec.id, engines=group, probe_interval_s=probe_interval_s)
                           if spec.remote is not None or spec.fallbacks else engines[spec.id])
    return AsrModels(served, default=registry.default,
                     languages={spec.id: spec.languages for spec in registry.models.values()})


def _engine(spec: ModelSpec, cfg: AsrServiceConfig, workers: WorkerConfig) -> AsrEngine:
    if spec.remote is not None:
        return _remote_engine(spec.id, spec.remote)
    from web_demo.server.engines.local import WorkerAsrEngine

    return WorkerAsrEngine(name=spec.id, handler=ASR_HANDLERS[spec.local_engine],
                           init_kwargs={"model_dir": _local_model_dir(spec, cfg)},
                           devices=asr_devices(cfg), cfg=workers)


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
