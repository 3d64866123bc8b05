"""Fake engines and worker handlers for protocol, session and supervisor tests."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from web_demo.server.config import WorkerConfig
from web_demo.server.engines.base import (
    AudioDelta,
    PcmChunk,
    ReplyEvent,
    ReplyRequest,
    Segment,
    SynthesisRequest,
    TextDelta,
    Transcription,
    TranscriptionRequest,
    UserTranscript,
)
from web_demo.server.errors import BadRequest, ServingError
from web_demo.server.workers.handler import unknown_request

_TONE_200MS = (0.3 * np.sin(2 * np.pi * 330 * np.arange(4800) / 24000)).astype(np.float32)


@dataclass
class FakeEngine:
    """Replies with `text_pieces` and `audio_s` of a 330 Hz tone, in 200 ms steps.

    Records every request, every conversation it opened, and the loop time at which each
    reply that did not run to its end was stopped (cancelled or closed).
    """
    name: str = "fake"
    audio_s: float = 1.0
    step_delay_s: float = 0.0
    text_pieces: tuple[str, ...] = ("Hello ", "there.")
    fail_with: Exception | None = None
    start_delay_s: float = 0.0
    first_events: Callable[[ReplyRequest], Sequence[ReplyEvent]] | None = None  # yielded first
    requests: list[ReplyRequest] = field(default_factory=list)
    stopped_at: list[float] = field(default_factory=list)
    conversations: dict[str, FakeConversation] = field(default_factory=dict)

    async def start(self) -> None:
        await asyncio.sleep(self.start_delay_s)

    async def aclose(self) -> None:
        return None

    def open_session(self, session_id: str, *, history_turns: int) -> FakeConversation:
        conversation = FakeConversation(self, history_turns)
        self.conversations[session_id] = conversation
        return conversation

    def health(self) -> dict[str, Any]:
        return {"engine": self.name, "models": {}}


@dataclass
class FakeConversation:
    engine: FakeEngine
    history_turns: int
    committed: list[str] = field(default_factory=list)  # heard text of each finished reply
    resets: int = 0
    closed: bool = False

    async def reply(self, request: ReplyRequest) -> AsyncGenerator[ReplyEvent, None]:
        engine = self.engine
        engine.requests.append(request)
        finished = False
        try:
            for event in engine.first_events(request) if engine.first_events else ():
                yield event
            yield UserTranscript(f"heard {len(request.user_audio_16k)} samples")
            if engine.fail_with is not None:
                raise engine.fail_with
            for piece in engine.text_pieces:
                yield TextDelta(piece)
            for _ in range(round(engine.audio_s / 0.2)):
                if engine.step_delay_s:
                    await asyncio.sleep(engine.step_delay_s)
                yield AudioDelta(_TONE_200MS)
            finished = True
        finally:
            if not finished:
                engine.stopped_at.append(asyncio.get_running_loop().time())

    def commit_reply(self, heard_text: str) -> None:
        self.committed.append(heard_text)

    def reset(self) -> None:
        self.resets += 1
        self.committed.clear()

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class ToneTts:
    """In-process TtsEngine: 200 ms of a 330 Hz tone per request; records each text it was
    asked to speak, and in which voice."""
    name: str = "tone"
    sample_rate: int = 24000
    texts: list[str] = field(default_factory=list)
    voices: list[str | None] = field(default_factory=list)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def health(self) -> dict[str, object]:
        return {"model": "tone", "device": "cpu"}

    async def speakers(self) -> list[str]:
        return ["tone"]

    async def synthesize(self, request: SynthesisRequest) -> AsyncGenerator[PcmChunk, None]:
        self.texts.append(request.text)
        self.voices.append(request.voice)
        yield PcmChunk(_TONE_200MS, self.sample_rate)


# ---- worker handlers, loaded by import path inside spawned worker processes -------------

# Short timeouts so that supervisor tests run in seconds; hang_timeout_s stays well above
# one tiny-model vocoder step on a loaded CI machine.
FAST = WorkerConfig(ready_timeout_s=30, close_timeout_s=1.0, restart_backoff_s=(0.1, 0.2),
                    request_timeout_s=20.0, heartbeat_interval_s=0.2, heartbeat_timeout_s=5.0,
                    hang_timeout_s=10.0, max_pending=64, restart_wait_s=15.0)


async def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


@dataclass(frozen=True)
class Echo:
    value: Any
    times: int = 1


@dataclass(frozen=True)
class Sleep:
    """Yields 0..chunks-1, sleeping `seconds` before each."""
    seconds: float
    chunks: int


@dataclass(frozen=True)
class Hang:
    """Never returns from its first step (sleeps, so the GIL is free and pings are answered)."""


@dataclass(frozen=True)
class Spin:
    """A handler stuck in a busy Python loop."""


@dataclass(frozen=True)
class Reject:
    """Fails with a BadRequest naming a field, as a handler does for bad input."""
    param: str = "value"


@dataclass(frozen=True)
class Crash:
    """Fails with an unexpected exception."""


@dataclass(frozen=True)
class Blob:
    """A large payload; answered with its size."""
    data: np.ndarray = field(repr=False)


class EchoHandler:
    """Serves the request types above; `info()` reports its pid."""

    def __init__(self, *, init_delay_s: float = 0.0, fail_init: bool = False,
                 ignore_shutdown: bool = False) -> None:
        time.sleep(init_delay_s)
        if fail_init:
            raise RuntimeError("init failed on purpose")
        if ignore_shutdown:  # with a Hang request: a handler that never returns to the loop
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def info(self) -> dict[str, Any]:
        return {"model": "echo", "device": "cpu", "pid": os.getpid()}

    def handle(self, request: object) -> Iterator[Any]:
        if isinstance(request, Echo):
            for _ in range(request.times):
                yield request.value
        elif isinstance(request, Sleep):
            for i in range(request.chunks):
                time.sleep(request.seconds)
                yield i
        elif isinstance(request, Hang):
            while True:
                time.sleep(1)
        elif isinstance(request, Spin):
            while True:
                pass
        elif isinstance(request, Reject):
            raise BadRequest("bad input on purpose", param=request.param)
        elif isinstance(request, Crash):
            raise ValueError("crashed on purpose")
        elif isinstance(request, Blob):
            yield request.data.nbytes
        else:
            raise unknown_request(request)


@dataclass(frozen=True)
class BatchSizes:
    """Asks a BatchEchoHandler for the sizes of the batches it has served."""


class BatchEchoHandler:
    """A batching handler: each batch takes `step_s`; Echo(times < 0) fails only itself."""

    def __init__(self, *, max_batch: int = 8, step_s: float = 0.2) -> None:
        self.max_batch = max_batch
        self._step_s = step_s
        self._sizes: list[int] = []

    def info(self) -> dict[str, Any]:
        return {"model": "batch-echo", "device": "cpu", "max_batch": self.max_batch}

    def handle(self, request: object) -> Iterator[Any]:
        (outcome,) = self.handle_batch([request])
        if isinstance(outcome, ServingError):
            raise outcome
        yield from outcome

    def handle_batch(self, requests: Sequence[object]) -> list[list[Any] | ServingError]:
        if all(isinstance(r, BatchSizes) for r in requests):
            return [[tuple(self._sizes)] for _ in requests]
        self._sizes.append(len(requests))
        time.sleep(self._step_s)
        return [self._one(r) for r in requests]

    def _one(self, request: object) -> list[Any] | ServingError:
        if not isinstance(request, Echo):
            return unknown_request(request)
        if request.times < 0:
            return BadRequest("times must not be negative", param="times")
        return [request.value] * request.times


@dataclass(frozen=True)
class OpenCounter:
    start: int = 0


@dataclass(frozen=True)
class Add:
    amount: int


@dataclass(frozen=True)
class StreamStats:
    """Asks a CounterStreamHandler how many streams it holds and has closed."""


@dataclass
class _Counter:
    total: int
    pid: int


class CounterStreamHandler:
    """A stream handler: each stream sums what is pushed; finish yields the total."""

    def __init__(self, *, max_streams: int = 4, device: str = "cpu") -> None:
        self.max_streams = max_streams
        self._device = device  # a pool built from devices passes one per member
        self._open = 0
        self._closed = 0

    def info(self) -> dict[str, Any]:
        return {"model": "counter", "device": self._device, "pid": os.getpid()}

    def handle(self, request: object) -> Iterator[Any]:
        if not isinstance(request, StreamStats):
            raise unknown_request(request)
        yield {"open": self._open, "closed": self._closed}

    def open_stream(self, request: object) -> _Counter:
        if not isinstance(request, OpenCounter):
            raise unknown_request(request)
        self._open += 1
        return _Counter(request.start, os.getpid())

    def push(self, state: _Counter, request: object) -> Iterator[Any]:
        if not isinstance(request, Add):
            raise BadRequest(f"expected Add, got {type(request).__name__}", param="amount")
        state.total += request.amount
        yield (state.total, state.pid)

    def finish(self, state: _Counter) -> Iterator[Any]:
        yield ("total", state.total)

    def close(self, state: _Counter) -> None:
        self._open -= 1
        self._closed += 1


class ToneTtsHandler:
    """A TTS worker handler that streams 200 ms tone chunks slowly (time to kill it)."""

    def __init__(self, *, chunk_delay_s: float = 0.1, chunks_per_sentence: int = 3) -> None:
        self._delay = chunk_delay_s
        self._chunks = chunks_per_sentence

    def info(self) -> dict[str, Any]:
        return {"model": "tone", "device": "cpu", "pid": os.getpid()}

    def handle(self, request: object) -> Iterator[PcmChunk]:
        if not isinstance(request, SynthesisRequest):
            raise unknown_request(request)
        for _ in range(self._chunks):
            time.sleep(self._delay)
            yield PcmChunk(_TONE_200MS, 24000)


@dataclass
class FakeAsr:
    """In-process AsrEngine that 'hears' a fixed sentence."""
    name: str = "fake-asr"
    text: str = "Tell me a story. Make it long. Please go on."
    requests: list[TranscriptionRequest] = field(default_factory=list)  # as received

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def transcribe(self, request: TranscriptionRequest) -> Transcription:
        self.requests.append(request)
        duration_s = len(request.pcm_16k) / 16000
        return Transcription(self.text, "en", duration_s,
                             segments=(Segment(0.0, duration_s, self.text),))

    def health(self) -> dict[str, Any]:
        return {"model": "fake", "device": "cpu", "alive": True}
