"""The engine interfaces that sessions and HTTP handlers program against.

A handler cannot tell which engine it holds (in-process, worker subprocess, remote HTTP),
so tests swap in fakes. Engines receive audio in memory (float32 PCM, rate in the name).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class SamplingOptions:
    """Sampling settings one session asked for (upstream's browser client puts them in its
    query string); None: the engine's own. Engines that do not sample ignore them.

    A temperature of 0 means greedy; a top-k of 0 means no top-k limit; a negative seed means
    a random one (moshi's convention). `repetition_window` limits the repetition penalty to
    the last N tokens. sampling_query.py parses and clamps them."""
    text_temperature: float | None = None
    text_top_k: int | None = None
    speech_temperature: float | None = None
    speech_top_k: int | None = None
    text_seed: int | None = None
    speech_seed: int | None = None
    repetition_penalty: float | None = None
    repetition_window: int | None = None
    max_text_tokens: int | None = None  # the reply's text tokens at most (a Realtime client's cap)

    def overridden_by(self, other: SamplingOptions) -> SamplingOptions:
        """These settings with the ones `other` sets in their place."""
        return replace(self, **{f.name: value for f in fields(other)
                                if (value := getattr(other, f.name)) is not None})


@dataclass(frozen=True)
class Tool:
    """A function the model may call (OpenAI's function tool)."""
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)  # JSON Schema of the arguments


@dataclass(frozen=True)
class ToolResult:
    """The client's output of a call the model made, answered in the next reply."""
    call_id: str
    output: str


@dataclass(frozen=True)
class ReplyRequest:
    """One finished user turn of a conversation, to be answered."""
    turn_index: int  # 0-based, counts every turn of the session, restarts included
    system_prompt: str | None
    user_audio_16k: np.ndarray = field(repr=False)  # float32 [T]; empty for a typed turn
    sampling: SamplingOptions | None = None  # None: the engine's own settings
    user_text: str | None = None  # a typed turn (the Realtime API's input_text), not speech
    tools: tuple[Tool, ...] = ()  # the model may call these instead of answering
    tool_results: tuple[ToolResult, ...] = ()  # this turn's input: outputs of the last calls
    voice: str | None = None  # engines that speak through a TTS: its voice; None: the engine's own


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


@dataclass(frozen=True)
class ToolCall:
    """The model calls a tool; the reply carries no speech then. `arguments`: JSON text."""
    call_id: str
    name: str
    arguments: str


ReplyEvent = UserTranscript | TextDelta | AudioDelta | QueuePosition | ToolCall


class S2SConversation(Protocol):
    """One connection's conversation inside an engine; its history and caches live here.

    Owned by the ChatSession that opened it, used by one reply at a time, closed with it.
    """

    def reply(self, request: ReplyRequest) -> AsyncGenerator[ReplyEvent, None]:
        """Streams the answer to a user turn. An async generator: the caller closes it
        (contextlib.aclosing) so that barge-in stops generation and vocoding at once."""
        ...

    def commit_reply(self, heard_text: str) -> None:
        """The last reply ended (finished or cut short): this much of its text reached the
        listener, and only this much belongs in the history."""
        ...

    def reset(self) -> None:
        """Forget the history (the client's restart); applies from the next turn."""
        ...

    async def aclose(self) -> None:
        """Free everything the conversation holds (caches, streams)."""
        ...


class S2SEngine(Protocol):
    """Speech in, text and speech out, streamed; shared by every session of a server."""

    name: str

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def open_session(self, session_id: str, *, history_turns: int) -> S2SConversation:
        """A conversation that keeps at most `history_turns` finished turns as context."""
        ...

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
    # Decoder statistics, from engines that report them (Whisper); None = unknown.
    avg_logprob: float | None = None
    compression_ratio: float | None = None
    no_speech_prob: float | None = None


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
class PcmChunk:
    pcm: np.ndarray = field(repr=False)  # float32 [T]
    sample_rate: int


@dataclass(frozen=True)
class SynthesisRequest:
    text: str
    voice: str | None = None  # speaker id or voice name; None = the engine's default
    prompt_audio: PcmChunk | None = None  # a voice to clone (zero-shot), at its own rate
    prompt_text: str | None = None  # what the prompt audio says
    instructions: str | None = None  # style instructions, for engines that take them
    speed: float = 1.0
    sample_rate: int | None = None  # output rate; None = the engine's native rate
    seed: int | None = None  # sampling engines: the same seed gives the same audio


@dataclass(frozen=True)
class SpeakerCreate:
    """Save a voice under `name`: its prompt audio and (for zero-shot) what it says."""
    name: str
    prompt_audio: PcmChunk
    prompt_text: str | None


@dataclass(frozen=True)
class SpeakerList:
    """Ask an engine for the speaker ids it can use."""


class TtsEngine(Protocol):
    name: str
    sample_rate: int  # native output rate

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def synthesize(self, request: SynthesisRequest) -> AsyncGenerator[PcmChunk, None]:
        """Streams PCM chunks at request.sample_rate (or the native rate). An async generator:
        the caller closes it (contextlib.aclosing) so that a client gone stops the synthesis."""
        ...

    async def speakers(self) -> list[str]:
        """The speaker ids `voice` may name."""
        ...

    async def add_speaker(self, request: SpeakerCreate) -> str:
        """Saves a voice; returns its id. Engines that cannot clone raise BadRequest."""
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
