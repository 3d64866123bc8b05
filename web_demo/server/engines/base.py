"""The engine interfaces that sessions and HTTP handlers program against.

A handler cannot tell which engine it holds (in-process, worker subprocess, remote HTTP),
so tests swap in fakes. Engines receive audio in memory (float32 PCM, rate in the name).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
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
class Word:
    start_s: float
    end_s: float
    text: str
    probability: float | None = None


@dataclass(frozen=True)
class Segment:
    """A stretch of speech with its text; times in seconds from the start of the audio."""
    start_s: float
    end_s: float
    text: str
    words: tuple[Word, ...] = ()  # only from engines that time words


@dataclass(frozen=True)
class TranscriptionRequest:
    pcm_16k: np.ndarray = field(repr=False)  # float32 [T]
    language: str | None = None  # ISO-639-1 (e.g. "en", "zh"); None = detect
    hotwords: tuple[str, ...] = ()
    prompt: str | None = None  # context that biases decoding (previous text, terms)
    temperature: float = 0.0
    word_timestamps: bool = False


@dataclass(frozen=True)
class Transcription:
    text: str
    language: str | None
    duration_s: float
    segments: tuple[Segment, ...] = ()


class AsrEngine(Protocol):
    name: str

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def transcribe(self, request: TranscriptionRequest) -> Transcription: ...

    def health(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class SynthesisRequest:
    text: str
    voice: str | None = None  # speaker id or voice name; None = the engine's default
    prompt_audio_16k: np.ndarray | None = field(default=None, repr=False)  # zero-shot reference
    prompt_text: str | None = None  # what the prompt audio says
    instructions: str | None = None  # style instructions, for engines that take them
    speed: float = 1.0
    sample_rate: int | None = None  # output rate; None = the engine's native rate


@dataclass(frozen=True)
class PcmChunk:
    pcm: np.ndarray = field(repr=False)  # float32 [T]
    sample_rate: int


class TtsEngine(Protocol):
    name: str
    sample_rate: int  # native output rate

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def synthesize(self, request: SynthesisRequest) -> AsyncIterator[PcmChunk]:
        """Streams PCM chunks at request.sample_rate (or the native rate)."""
        ...

    def health(self) -> dict[str, Any]: ...


class VocoderStream(Protocol):
    """One reply's speech tokens -> 24 kHz PCM, in order; owned by the reply that opened it."""

    async def push(self, tokens: Sequence[int]) -> list[np.ndarray]:
        """Adds 25 Hz speech tokens; returns the float32 [T] PCM chunks now ready."""
        ...

    async def finish(self) -> list[np.ndarray]:
        """Ends the stream; returns the remaining PCM."""
        ...

    async def aclose(self) -> None:
        """Drops the stream (barge-in, failure); a no-op after finish()."""
        ...


class Vocoder(Protocol):
    name: str
    sample_rate: int

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def open_stream(self) -> VocoderStream: ...

    def health(self) -> dict[str, Any]: ...
