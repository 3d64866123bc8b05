"""The engine interfaces that sessions and HTTP handlers program against.

A handler cannot tell which engine it holds (in-process, worker subprocess, remote HTTP),
so tests swap in fakes. Engines receive audio in memory (float32 PCM, rate in the name).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class HistoryTurn:
    """One finished exchange: what the user said and what of the reply was actually sent."""
    user_audio_16k: np.ndarray  # float32 [T]
    user_text: str | None  # transcript, when the engine produced one
    assistant_text: str  # only the text that reached the client (barge-in truncates it)


@dataclass(frozen=True)
class ReplyRequest:
    session_id: str
    turn_index: int  # 0-based, counts every turn of the session, restarts included
    system_prompt: str | None
    history: tuple[HistoryTurn, ...]  # oldest first, already capped by the session
    user_audio_16k: np.ndarray  # float32 [T], the new user turn


@dataclass(frozen=True)
class UserTranscript:
    text: str


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class AudioDelta:
    pcm_24k: np.ndarray = field(repr=False)  # float32 [T]


@dataclass(frozen=True)
class QueuePosition:
    """The turn waits for capacity; `position` turns (this one included) are ahead of it."""
    position: int


ReplyEvent = UserTranscript | TextDelta | AudioDelta | QueuePosition


class S2SEngine(Protocol):
    """Speech in, text and speech out, streamed.

    `reply` is an async generator; cancelling the task that iterates it (barge-in, client
    gone) must stop generation and vocoding promptly and free per-request resources.
    """

    name: str

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def reply(self, request: ReplyRequest) -> AsyncIterator[ReplyEvent]: ...

    def end_session(self, session_id: str) -> None:
        """Drop any state cached for this session (KV caches, vocoder streams)."""

    def health(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Transcription:
    text: str
    language: str | None
    duration_s: float


class AsrEngine(Protocol):
    name: str

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def transcribe(self, pcm_16k: np.ndarray, *, language: str | None = None,
                         hotwords: tuple[str, ...] = ()) -> Transcription: ...

    def health(self) -> dict[str, Any]: ...


class TtsEngine(Protocol):
    name: str
    sample_rate: int

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def synthesize(self, text: str, *, voice: str | None = None) -> AsyncIterator[np.ndarray]:
        """Streams float32 PCM chunks at `sample_rate`."""
        ...

    def health(self) -> dict[str, Any]: ...
