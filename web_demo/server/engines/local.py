"""ASR, TTS and vocoder engines backed by local worker subprocesses (workers/).

Each engine holds a WorkerClient: one supervised process, or a pool with one process per
device; it cannot tell which. The typed requests and results cross the pipe unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import numpy as np

from utils.audio import WIRE_SAMPLE_RATE
from web_demo.server.config import WorkerConfig
from web_demo.server.engines.base import (
    PcmChunk,
    SpeakerCreate,
    SpeakerList,
    SynthesisRequest,
    Transcription,
    TranscriptionRequest,
    VocoderStream,
)
from web_demo.server.errors import EngineError
from web_demo.server.workers.client import WorkerClient
from web_demo.server.workers.pool import make_worker
from web_demo.server.workers.supervisor import WorkerStream
from web_demo.server.workers.vocoder_worker import SpeechTokens, VocoderStreamRequest


class _WorkerBacked:
    """Lifetime and health of the worker process(es) behind an engine.

    Pass `worker` (a supervisor or a pool) or let the engine build one from `handler`,
    `init_kwargs` and `devices` (more than one device -> a pool, one process per device).
    """

    default_handler = ""

    def __init__(self, *, name: str, worker: WorkerClient | None = None,
                 handler: str | None = None, init_kwargs: dict[str, Any] | None = None,
                 devices: Sequence[str] | None = None, cfg: WorkerConfig = WorkerConfig()) -> None:
        self.name = name
        self._worker = worker or make_worker(
            name=name, handler=handler or self.default_handler, init_kwargs=init_kwargs or {},
            devices=devices, cfg=cfg)

    @property
    def worker(self) -> WorkerClient:
        return self._worker

    async def start(self) -> None:
        await self._worker.start()

    async def aclose(self) -> None:
        await self._worker.aclose()

    def health(self) -> dict[str, Any]:
        return self._worker.health()


class WorkerAsrEngine(_WorkerBacked):
    """Transcribes in a worker running FasterWhisperHandler (or any TranscriptionRequest handler)."""

    default_handler = "web_demo.server.workers.asr_worker:FasterWhisperHandler"

    def __init__(self, *, name: str = "asr", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)

    async def transcribe(self, request: TranscriptionRequest) -> Transcription:
        results = await self._worker.call(request)
        if len(results) != 1 or not isinstance(results[0], Transcription):
            raise EngineError(f"{self.name} worker returned {results!r:.200}, not one Transcription")
        return results[0]


class WorkerTtsEngine(_WorkerBacked):
    """Synthesises in a worker running EspeakHandler (or any SynthesisRequest handler)."""

    default_handler = "web_demo.server.workers.tts_worker:EspeakHandler"
    sample_rate = WIRE_SAMPLE_RATE

    def __init__(self, *, name: str = "tts", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)

    async def synthesize(self, request: SynthesisRequest) -> AsyncGenerator[PcmChunk, None]:
        async with contextlib.aclosing(self._worker.stream(request)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def speakers(self) -> list[str]:
        return list(await self._one(SpeakerList(), list))

    async def add_speaker(self, request: SpeakerCreate) -> str:
        return str(await self._one(request, str))

    async def _one(self, request: object, kind: type) -> Any:
        results = await self._worker.call(request)
        if len(results) != 1 or not isinstance(results[0], kind):
            raise EngineError(f"{self.name} worker returned {results!r:.200}, not one {kind.__name__}")
        return results[0]


class WorkerVocoder(_WorkerBacked):
    """Speech tokens -> 24 kHz PCM in a worker running CosyVoice3Handler, one stream per reply."""

    default_handler = "web_demo.server.workers.vocoder_worker:CosyVoice3Handler"
    sample_rate = WIRE_SAMPLE_RATE

    def __init__(self, *, name: str = "vocoder", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)

    def open_stream(self) -> VocoderStream:
        return _WorkerVocoderStream(self._worker.open_stream(VocoderStreamRequest()))


class _WorkerVocoderStream:
    """A VocoderStream over one WorkerStream (opened in the worker on the first push)."""

    def __init__(self, stream: WorkerStream) -> None:
        self._stream = stream

    async def push(self, tokens: Sequence[int]) -> list[np.ndarray]:
        return _pcm(await self._stream.push(SpeechTokens(tuple(tokens))))

    async def finish(self) -> list[np.ndarray]:
        return _pcm(await self._stream.finish())

    async def aclose(self) -> None:
        await self._stream.aclose()


def _pcm(chunks: list[PcmChunk]) -> list[np.ndarray]:
    return [chunk.pcm for chunk in chunks]
