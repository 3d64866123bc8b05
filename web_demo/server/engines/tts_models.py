"""The TTS models one service serves, by model id, behind the one TtsEngine interface.

Routes resolve the `model` a client names to an engine here; the default model answers
requests that name none and OpenAI's generic ids (tts-1, tts-1-hd, gpt-4o-mini-tts). A
--models registry (tts_registry.py) fills the mapping with `build_tts_registry_models`: each
entry becomes one engine, a local worker (cosyvoice3, espeak-ng, built as tts_service.py
builds them) or a remote OpenAI-compatible speech server; an entry with a remote engine or
with fallbacks is served through a FailoverTtsEngine, so a server that is down at start leaves
the service degraded and comes back by itself. An engine that is a model of its own and
another's fallback is one engine (one worker, one connection pool), shared.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from pathlib import Path
from typing import Any, NamedTuple

from web_demo.server.config import TtsServiceConfig, WorkerConfig
from web_demo.server.engines.base import PcmChunk, SpeakerCreate, SynthesisRequest, TtsEngine
from web_demo.server.engines.failover import SharedEngine, reported_status
from web_demo.server.engines.tts_failover import FailoverTtsEngine
from web_demo.server.engines.tts_registry import TtsModelSpec, TtsRegistry, TtsRemoteTarget
from web_demo.server.engines.tts_service import (
    TTS_HANDLERS,
    TtsChoice,
    check_vllm,
    cosyvoice3_init,
    tts_devices,
)
from web_demo.server.errors import ModelNotFound

logger = logging.getLogger(__name__)

GENERIC_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")  # OpenAI clients' ids: the default model


class ServedTtsModel(NamedTuple):
    id: str
    engine: TtsEngine


class TtsModels:
    """Owned by the app (started and closed with it); itself a TtsEngine for the default model."""

    def __init__(self, models: Mapping[str, TtsEngine], *, default: str | None = None) -> None:
        if not models:
            raise ValueError("a TTS service needs at least one model")
        self._models = dict(models)
        self.default = default or next(iter(self._models))
        if self.default not in self._models:
            raise ValueError(f"default model {self.default!r} is not among {list(self._models)}")
        self.name = self.default
        self.sample_rate = self._models[self.default].sample_rate

    @classmethod
    def single(cls, engine: TtsEngine) -> TtsModels:
        return engine if isinstance(engine, TtsModels) else cls({engine.name: engine})

    @property
    def ids(self) -> list[str]:
        return list(self._models)

    def resolve(self, model: str | None, *, param: str = "model") -> ServedTtsModel:
        """A client's model id (None, an alias: the default) -> (id, engine); else a 404."""
        model_id = self.default if model is None or model in GENERIC_ALIASES else model
        engine = self._models.get(model_id)
        if engine is None:
            raise ModelNotFound(f"model {str(model)[:80]!r} is not served here; models: "
                                f"{', '.join(self.ids + list(GENERIC_ALIASES))}", param=param)
        return ServedTtsModel(model_id, engine)

    def _distinct(self) -> list[TtsEngine]:
        """Each engine once, though several ids may name it."""
        return list({id(engine): engine for engine in self._models.values()}.values())

    async def start(self) -> None:
        outcomes = await asyncio.gather(*(e.start() for e in self._distinct()), return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors:  # all or nothing, like a worker pool
            await self.aclose()
            raise errors[0]

    async def aclose(self) -> None:
        for engine in self._distinct():
            try:
                await engine.aclose()
            except Exception:
                logger.exception("closing TTS model %s failed", engine.name)

    async def synthesize(self, request: SynthesisRequest) -> AsyncGenerator[PcmChunk, None]:
        async with aclosing(self._models[self.default].synthesize(request)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def speakers(self) -> list[str]:
        return await self._models[self.default].speakers()

    async def add_speaker(self, request: SpeakerCreate) -> str:
        return await self._models[self.default].add_speaker(request)

    def health(self) -> dict[str, Any]:
        """The default model's report (the TTS service's flat {"status", "model", "device",
        "vllm_enabled"}) with the service's status, each model's report and the worker
        processes (read by /metrics)."""
        reports = {model_id: engine.health() for model_id, engine in self._models.items()}
        workers: dict[str, Any] = {}
        for model_id, engine in self._models.items():
            raw = reports[model_id]
            if "alive" in raw:  # a worker-backed engine's supervisor or pool report
                workers[engine.name] = raw
            workers.update(raw.get("workers") or {})  # a failover group's local members
        # A model with every engine down (a remote server not up yet, or gone) leaves the service
        # degraded, not dead: it answers the other models, and its probes bring that one back.
        statuses = {reported_status(raw) for raw in reports.values()}
        return {**reports[self.default], "status": "healthy" if statuses == {"healthy"} else "degraded",
                "model": self.default, "models": reports, "workers": workers}


class SharedTtsEngine(SharedEngine[TtsEngine]):
    """A TTS engine shared by several models (failover.SharedEngine)."""

    def __init__(self, engine: TtsEngine) -> None:
        super().__init__(engine)
        self.sample_rate = engine.sample_rate

    async def synthesize(self, request: SynthesisRequest) -> AsyncGenerator[PcmChunk, None]:
        async with aclosing(self.engine.synthesize(request)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def speakers(self) -> list[str]:
        return await self.engine.speakers()

    async def add_speaker(self, request: SpeakerCreate) -> str:
        return await self.engine.add_speaker(request)


def build_tts_registry_models(registry: TtsRegistry, cfg: TtsServiceConfig, workers: WorkerConfig, *,
                              probe_interval_s: float = 5.0,
                              env: Mapping[str, str] | None = None) -> TtsModels:
    """The registry's models, one engine each (fallbacks shared); builds, loads nothing.
    `env` holds the remotes' keys (extra_kwargs.api_key_env); default os.environ."""
    _check_vllm(registry, cfg)
    environ = os.environ if env is None else env
    engines = {spec.id: SharedTtsEngine(_engine(spec, cfg, workers, environ))
               for spec in registry.models.values()}
    served: dict[str, TtsEngine] = {}
    for spec in registry.models.values():
        if spec.remote is None and not spec.fallbacks:
            served[spec.id] = engines[spec.id]
            continue
        group = [engines[spec.id], *(engines[other] for other in spec.fallbacks)]
        served[spec.id] = FailoverTtsEngine(name=spec.id, engines=group, probe_interval_s=probe_interval_s)
    return TtsModels(served, default=registry.default)


def _check_vllm(registry: TtsRegistry, cfg: TtsServiceConfig) -> None:
    """--use-vllm is honoured or refused, never ignored: it concerns the embedded CosyVoice3s."""
    if not cfg.use_vllm:
        return
    local = [s for s in registry.models.values() if s.remote is None and s.engine == "cosyvoice3"]
    if not local:
        raise ValueError(f"--use-vllm needs an embedded cosyvoice3 model; {registry.source} has none "
                         "(a remote model runs on its own server)")
    check_vllm(cfg, TtsChoice("cosyvoice3", local[0].id, stand_in=False))


def _engine(spec: TtsModelSpec, cfg: TtsServiceConfig, workers: WorkerConfig,
            env: Mapping[str, str]) -> TtsEngine:
    from web_demo.server.engines.local import WorkerTtsEngine

    if spec.remote is not None:
        return _remote_engine(spec, spec.remote, env)
    if spec.local_engine == "espeak-ng":
        return WorkerTtsEngine(name=spec.id, handler=TTS_HANDLERS["espeak-ng"],
                               init_kwargs={"voice": spec.voice or cfg.espeak_voice}, cfg=workers)
    assert spec.offline is not None  # the registry checked the directory
    init = cosyvoice3_init(cfg, str(Path(spec.offline).resolve()), spec.voice or cfg.default_speaker)
    return WorkerTtsEngine(name=spec.id, handler=TTS_HANDLERS["cosyvoice3"], init_kwargs=init,
                           devices=tts_devices(cfg), cfg=workers)


def _remote_engine(spec: TtsModelSpec, target: TtsRemoteTarget, env: Mapping[str, str]) -> TtsEngine:
    from web_demo.server.engines.remote_tts import OpenAISpeechEngine

    api_key = env.get(target.api_key_env) if target.api_key_env else None
    if target.api_key_env and not api_key:
        logger.warning("TTS model %s: %s is not set; calling %s without a key", spec.id,
                       target.api_key_env, target.base_url)
    return OpenAISpeechEngine(target.base_url, target.model, api_key=api_key, voice=spec.voice,
                              timeout_s=target.timeout_s, name=spec.id,
                              voice_cloning=target.voice_cloning)
