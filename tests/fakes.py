"""Fake engines and worker handlers for protocol, session and supervisor tests."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from web_demo.server.engines.base import AudioDelta, ReplyEvent, ReplyRequest, TextDelta, UserTranscript


_TONE_200MS = (0.3 * np.sin(2 * np.pi * 330 * np.arange(4800) / 24000)).astype(np.float32)


@dataclass
class FakeEngine:
    """Replies with `text_pieces` and `audio_s` of a 330 Hz tone, in 200 ms steps.

    Records every request, and the loop time at which each reply was cancelled.
    """
    name: str = "fake"
    audio_s: float = 1.0
    step_delay_s: float = 0.0
    text_pieces: tuple[str, ...] = ("Hello ", "there.")
    fail_with: Exception | None = None
    requests: list[ReplyRequest] = field(default_factory=list)
    cancelled_at: list[float] = field(default_factory=list)
    ended_sessions: list[str] = field(default_factory=list)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def reply(self, request: ReplyRequest) -> AsyncIterator[ReplyEvent]:
        self.requests.append(request)
        try:
            yield UserTranscript(f"heard {len(request.user_audio_16k)} samples")
            if self.fail_with is not None:
                raise self.fail_with
            for piece in self.text_pieces:
                yield TextDelta(piece)
            steps = round(self.audio_s / 0.2)
            for step in range(steps):
                if self.step_delay_s:
                    await asyncio.sleep(self.step_delay_s)
                yield AudioDelta(_TONE_200MS)
        except asyncio.CancelledError:
            self.cancelled_at.append(asyncio.get_running_loop().time())
            raise

    def end_session(self, session_id: str) -> None:
        self.ended_sessions.append(session_id)

    def health(self) -> dict[str, Any]:
        return {"engine": self.name, "models": {}}


# ---- worker handlers, loaded by import path inside spawned worker processes -------------

class EchoHandler:
    """method "echo" yields the payload back `times` times; "sleep" sleeps then yields."""

    def __init__(self, *, init_delay_s: float = 0.0, fail_init: bool = False,
                 ignore_shutdown: bool = False) -> None:
        time.sleep(init_delay_s)
        if fail_init:
            raise RuntimeError("init failed on purpose")
        if ignore_shutdown:
            import signal

            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            # A handler stuck in native code never returns to the request loop.
            self._stuck = True
        self._ignore_shutdown = ignore_shutdown

    def info(self) -> dict[str, Any]:
        return {"model": "echo", "device": "cpu", "pid": os.getpid()}

    def handle(self, method: str, payload: Any) -> Iterator[Any]:
        if method == "echo":
            for _ in range(payload.get("times", 1)):
                yield payload["value"]
        elif method == "sleep":
            for i in range(payload["chunks"]):
                time.sleep(payload["seconds"])
                yield i
        elif method == "hang":
            while True:
                time.sleep(1)
        elif method == "fail":
            raise ValueError("bad input on purpose")
        else:
            raise ValueError(f"unknown method {method!r}")


class ToneTtsHandler:
    """A TTS worker handler that streams 200 ms tone chunks slowly (time to kill it)."""

    def __init__(self, *, chunk_delay_s: float = 0.1, chunks_per_sentence: int = 3) -> None:
        self._delay = chunk_delay_s
        self._chunks = chunks_per_sentence

    def info(self) -> dict[str, Any]:
        return {"model": "tone", "device": "cpu", "pid": os.getpid()}

    def handle(self, method: str, payload: Any) -> Iterator[Any]:
        for _ in range(self._chunks):
            time.sleep(self._delay)
            yield _TONE_200MS


@dataclass
class FakeAsr:
    """In-process AsrEngine that 'hears' a fixed sentence."""
    name: str = "fake-asr"
    text: str = "Tell me a story. Make it long. Please go on."

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def transcribe(self, pcm_16k: np.ndarray, *, language: str | None = None,
                         hotwords: tuple[str, ...] = ()) -> Any:
        from web_demo.server.engines.base import Transcription
        return Transcription(self.text, "en", len(pcm_16k) / 16000)

    def health(self) -> dict[str, Any]:
        return {"model": "fake", "device": "cpu", "alive": True}
