"""ASR, TTS and vocoder engines backed by local worker subprocesses (workers/supervisor.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from utils.audio import WIRE_SAMPLE_RATE
from web_demo.server.config import WorkerConfig
from web_demo.server.engines.base import Transcription
from web_demo.server.workers.supervisor import WorkerSupervisor


class _WorkerBacked:
    """Lifetime and health of the one worker process behind an engine."""

    default_handler = ""

    def __init__(self, *, name: str, init_kwargs: dict[str, Any], handler: str | None = None,
                 cfg: WorkerConfig = WorkerConfig()) -> None:
        self.name = name
        self._worker = WorkerSupervisor(name=name, handler=handler or self.default_handler,
                                        init_kwargs=init_kwargs, cfg=cfg)

    @property
    def worker(self) -> WorkerSupervisor:
        return self._worker

    async def start(self) -> None:
        await self._worker.start()

    async def aclose(self) -> None:
        await self._worker.aclose()

    def health(self) -> dict[str, Any]:
        return self._worker.health()


class WorkerAsrEngine(_WorkerBacked):
    """Transcribes in a worker running FasterWhisperHandler (or any "transcribe" handler)."""

    default_handler = "web_demo.server.workers.asr_worker:FasterWhisperHandler"

    def __init__(self, *, name: str = "asr", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)

    async def transcribe(self, pcm_16k: np.ndarray, *, language: str | None = None,
                         hotwords: tuple[str, ...] = ()) -> Transcription:
        (result,) = await self._worker.call(
            "transcribe", {"pcm_16k": pcm_16k, "language": language, "hotwords": list(hotwords)})
        return Transcription(text=result["text"], language=result["language"],
                             duration_s=result["duration_s"])


class WorkerTtsEngine(_WorkerBacked):
    """Synthesises text in a worker running EspeakHandler (or any "synthesize" handler)."""

    default_handler = "web_demo.server.workers.tts_worker:EspeakHandler"
    sample_rate = WIRE_SAMPLE_RATE

    def __init__(self, *, name: str = "tts", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)

    async def synthesize(self, text: str, *, voice: str | None = None) -> AsyncIterator[np.ndarray]:
        async for pcm_24k in self._worker.stream("synthesize", {"text": text, "voice": voice}):
            yield pcm_24k


class WorkerVocoder(_WorkerBacked):
    """Speech tokens -> 24 kHz PCM in a worker running CosyVoice3Handler, one stream per reply."""

    default_handler = "web_demo.server.workers.vocoder_worker:CosyVoice3Handler"
    sample_rate = WIRE_SAMPLE_RATE

    def __init__(self, *, name: str = "tts", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)

    async def push(self, stream_id: str, tokens: list[int]) -> list[np.ndarray]:
        return await self._worker.call("push", {"stream": stream_id, "tokens": tokens})

    async def finish(self, stream_id: str) -> list[np.ndarray]:
        return await self._worker.call("finish", {"stream": stream_id})

    async def close(self, stream_id: str) -> None:
        if self._worker.alive:
            await self._worker.call("close", {"stream": stream_id})
