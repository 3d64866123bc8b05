"""The ASR models one service serves, by model id, behind the one AsrEngine interface.

Routes resolve the `model` a client names to an engine here; the default model answers
`/api/transcribe` and OpenAI's generic `whisper-1`. Today a service serves one model; a
models.json registry (remote engines, fallbacks) fills the same mapping.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from web_demo.server.engines.base import AsrEngine, Transcription, TranscriptionRequest
from web_demo.server.engines.failover import SharedEngine
from web_demo.server.errors import BadRequest, ModelNotFound

logger = logging.getLogger(__name__)

GENERIC_ALIASES = ("whisper-1",)  # what OpenAI clients send by default: the default model


@dataclass(frozen=True)
class ServedModel:
    id: str
    engine: AsrEngine
    languages: tuple[str, ...] = ()  # ISO codes the registry declares; empty: the engine decides

    def check_language(self, code: str | None, asked: str) -> None:
        if code is not None and self.languages and code not in self.languages:
            raise BadRequest(f"model {self.id} transcribes {', '.join(self.languages)}, not "
                             f"{asked[:40]!r}", param="language")


class AsrModels:
    """Owned by the app (started and closed with it); itself an AsrEngine for the default model."""

    name = "asr"

    def __init__(self, models: Mapping[str, AsrEngine], *, default: str | None = None,
                 languages: Mapping[str, tuple[str, ...]] | None = None) -> None:
        if not models:
            raise ValueError("an ASR service needs at least one model")
        self._models = dict(models)
        self._languages = dict(languages or {})
        self.default = default or next(iter(self._models))
        if self.default not in self._models:
            raise ValueError(f"default model {self.default!r} is not among {list(self._models)}")

    @classmethod
    def single(cls, engine: AsrEngine) -> AsrModels:
        return engine if isinstance(engine, AsrModels) else cls({engine.name: engine})

    @property
    def ids(self) -> list[str]:
        return list(self._models)

    def resolve(self, model: str | None, *, param: str = "model") -> ServedModel:
        """A client's model id (None, an alias: the default) -> the model; else a 404."""
        model_id = self.default if model is None or model in GENERIC_ALIASES else model
        engine = self._models.get(model_id)
        if engine is None:
            raise ModelNotFound(f"model {str(model)[:80]!r} is not served here; models: "
                                f"{', '.join(self.ids + list(GENERIC_ALIASES))}", param=param)
        return ServedModel(model_id, engine, self._languages.get(model_id, ()))

    async def start(self) -> None:
        outcomes = await asyncio.gather(*(e.start() for e in self._models.values()),
                                        return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors:  # all or nothing, like a worker pool
            await self.aclose()
            raise errors[0]

    async def aclose(self) -> None:
        for model_id, engine in self._models.items():
            try:
                await engine.aclose()
            except Exception:
                logger.exception("closing ASR model %s failed", model_id)

    async def transcribe(self, request: TranscriptionRequest) -> Transcription:
        return await self._models[self.default].transcribe(request)

    def health(self) -> dict[str, Any]:
        """The deployment plan's {"status", "model", "device"} for the default model, then each
        model's state and the worker processes (read by /metrics)."""
        models, workers = {}, {}
        for model_id, engine in self._models.items():
            raw = engine.health()
            models[model_id] = {"status": _status(raw), "device": raw.get("device"),
                                "backend": raw.get("model"), "engine": engine.name}
            if "alive" in raw:  # a worker-backed engine's supervisor or pool report
                workers[engine.name] = raw
            workers.update(raw.get("workers") or {})  # a failover group's local members
        # A model with every engine down (a remote vLLM not up yet, or gone) leaves the service
        # degraded, not dead: it answers the other models, and its probes bring that one back.
        statuses = {m["status"] for m in models.values()}
        status = "healthy" if statuses == {"healthy"} else "degraded"
        return {"status": status, "model": self.default, "device": models[self.default]["device"],
                "engine": self.name, "models": models, "workers": workers}


class SharedAsrEngine(SharedEngine[AsrEngine]):
    """An ASR engine shared by several models (failover.SharedEngine)."""

    async def transcribe(self, request: TranscriptionRequest) -> Transcription:
        return await self.engine.transcribe(request)


def _status(raw: dict[str, Any]) -> str:
    if "status" in raw:
        return str(raw["status"])
    return "healthy" if raw.get("alive", True) else "degraded"
