"""ASR and TTS engines backed by local worker subprocesses (see workers/supervisor.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from utils.audio import WIRE_SAMPLE_RATE
from web_demo.server.config import WorkerConfig
from web_demo.server.engines.base import Transcription
from web_demo.server.workers.supervisor import WorkerSupervisor


class WorkerAsrEngine:
    """Transcribes in a worker running FasterWhisperHandler (or any "transcribe" handler)."""

    def __init__(self, *, name: str = "asr", init_kwargs: dict[str, Any],
                 handler: str = "web_demo.server.workers.asr_worker:FasterWhisperHandler",
                 cfg: WorkerConfig = WorkerConfig()) -> None:
        self.name = name
        self._worker = WorkerSupervisor(name=name, handler=handler, init_kwargs=init_kwargs, cfg=cfg)

    @property
    def worker(self) -> WorkerSupervisor:
        return self._worker

    async def start(self) -> None:
        await self._worker.start()

    async def aclose(self) -> None:
        await self._worker.aclose()

    async def transcribe(self, pcm_16k: np.ndarray, *, language: str | None = None,
                         hotwords: tuple[str, ...] = ()) -> Transcription:
        (result,) = await self._worker.call(
            "transcribe", {"pcm_16k": pcm_16k, "language": language, "hotwords": list(hotwords)})
        return Transcription(text=result["text"], language=result["language"],
                             duration_s=result["duration_s"])

    def health(self) -> dict[str, Any]:
        return self._worker.health()


class WorkerTtsEngine:
    """Synthesises in a worker running EspeakHandler (or any "synthesize" handler)."""

    sample_rate = WIRE_SAMPLE_RATE

    def __init__(self, *, name: str = "tts", init_kwargs: dict[str, Any],
                 handler: str = "web_demo.server.workers.tts_worker:EspeakHandler",
                 cfg: WorkerConfig = WorkerConfig()) -> None:
        self.name = name
        self._worker = WorkerSupervisor(name=name, handler=handler, init_kwargs=init_kwargs, cfg=cfg)

    @property
    def worker(self) -> WorkerSupervisor:
        return self._worker

    async def start(self) -> None:
        await self._worker.start()

    async def aclose(self) -> None:
        await self._worker.aclose()

    async def synthesize(self, text: str, *, voice: str | None = None) -> AsyncIterator[np.ndarray]:
        async for pcm_24k in self._worker.stream("synthesize", {"text": text, "voice": voice}):
            yield pcm_24k

    def health(self) -> dict[str, Any]:
        return self._worker.health()


class WorkerVocoder:
    """Speech tokens -> 24 kHz PCM in a worker running CosyVoice3Handler, one stream per reply."""

    sample_rate = WIRE_SAMPLE_RATE

    def __init__(self, *, name: str = "tts", init_kwargs: dict[str, Any],
                 handler: str = "web_demo.server.workers.vocoder_worker:CosyVoice3Handler",
                 cfg: WorkerConfig = WorkerConfig()) -> None:
        self.name = name
        self._worker = WorkerSupervisor(name=name, handler=handler, init_kwargs=init_kwargs, cfg=cfg)

    @property
    def worker(self) -> WorkerSupervisor:
        return self._worker

    async def start(self) -> None:
        await self._worker.start()

    async def aclose(self) -> None:
        await self._worker.aclose()

    async def push(self, stream_id: str, tokens: list[int]) -> list[np.ndarray]:
        return await self._worker.call("push", {"stream": stream_id, "tokens": tokens})

    async def finish(self, stream_id: str) -> list[np.ndarray]:
        return await self._worker.call("finish", {"stream": stream_id})

    async def close(self, stream_id: str) -> None:
        if self._worker.alive:
            await self._worker.call("close", {"stream": stream_id})

    def health(self) -> dict[str, Any]:
        return self._worker.health()
