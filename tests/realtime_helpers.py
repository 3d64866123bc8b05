"""Driving /v1/realtime with the real `openai` SDK (pinned in requirements.txt) in tests.

`connect(port)` opens the SDK's realtime connection (GA; `beta=True`: the SDK's beta client)
to a server on 127.0.0.1; `append_audio` feeds PCM16 (or G.711) in real-time-ish chunks;
`collect` reads server events until one matches, `quiet` reads what arrives in a while.
Events are the SDK's own parsed models; `Events` answers the questions tests ask of them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from openai import AsyncOpenAI

from utils.audio import WIRE_SAMPLE_RATE
from web_demo.server.realtime.audio_formats import AudioFormat, encode_audio

MODEL = "fun-audio-chat"
AUDIO_DELTAS = ("response.output_audio.delta", "response.audio.delta")  # GA, beta
TRANSCRIPT_DELTAS = ("response.output_audio_transcript.delta", "response.audio_transcript.delta")
TEXT_DELTAS = ("response.output_text.delta", "response.text.delta")
MANUAL_TURNS: dict[str, Any] = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}


def sdk_client(port: int, api_key: str = "test-key") -> AsyncOpenAI:
    # websocket_base_url: the SDK's beta client would otherwise always connect with wss://
    return AsyncOpenAI(api_key=api_key, base_url=f"http://127.0.0.1:{port}/v1",
                       websocket_base_url=f"ws://127.0.0.1:{port}/v1", max_retries=0)


def connect(port: int, *, api_key: str = "test-key", beta: bool = False) -> Any:
    """The SDK's connection manager (`async with connect(port) as conn:`)."""
    client = sdk_client(port, api_key)
    if beta:
        return client.beta.realtime.connect(model=MODEL)
    return client.realtime.connect(model=MODEL)


def with_silence(pcm_24k: np.ndarray, *, lead_s: float = 0.5, tail_s: float = 1.2) -> np.ndarray:
    """Speech with silence before it and after it (>= 1 s: enough for server VAD to end the turn)."""
    def zeros(s: float) -> np.ndarray:
        return np.zeros(int(s * WIRE_SAMPLE_RATE), np.float32)

    return np.concatenate([zeros(lead_s), pcm_24k.astype(np.float32), zeros(tail_s)])


def tone_24k(seconds: float, freq: float = 440.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * WIRE_SAMPLE_RATE)) / WIRE_SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def append_audio(conn: Any, pcm: np.ndarray, *, fmt: AudioFormat = AudioFormat.PCM16,
                       chunk_s: float = 0.1, speed: float = 3.0) -> None:
    """input_audio_buffer.append of float32 `pcm` (at `fmt`'s rate) in `chunk_s` pieces, paced
    at `speed` times real time as a microphone would send them (a little faster)."""
    step = int(chunk_s * fmt.sample_rate)
    for start in range(0, len(pcm), step):
        await conn.input_audio_buffer.append(audio=b64(encode_audio(pcm[start:start + step], fmt)))
        await asyncio.sleep(chunk_s / speed)


@dataclass
class Events:
    """Server events in arrival order (the SDK's models)."""

    items: list[Any] = field(default_factory=list)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)

    def __add__(self, other: Events) -> Events:
        return Events(self.items + other.items)

    def types(self) -> list[str]:
        return [e.type for e in self.items]

    def of(self, *types: str) -> list[Any]:
        return [e for e in self.items if e.type in types]

    def one(self, kind: str) -> Any:
        found = self.of(kind)
        assert len(found) == 1, (kind, self.types())
        return found[0]

    def index(self, kind: str, start: int = 0) -> int:
        """Where the first `kind` event at or after `start` is."""
        return self.types().index(kind, start)

    def in_order(self, *kinds: str) -> bool:
        """Whether the first event of each of `kinds` arrived in that order (all did arrive)."""
        types = self.types()
        firsts = [types.index(kind) for kind in kinds if kind in types]
        return len(firsts) == len(kinds) and firsts == sorted(firsts)

    def audio(self, response_id: str | None = None) -> bytes:
        """The audio deltas' bytes (of one response), decoded from base64, concatenated."""
        return b"".join(base64.b64decode(e.delta) for e in self.of(*AUDIO_DELTAS)
                        if response_id is None or e.response_id == response_id)

    def pcm16(self, response_id: str | None = None) -> np.ndarray:
        """The audio deltas as float32 PCM (the session's output format must be PCM16)."""
        return np.frombuffer(self.audio(response_id), "<i2").astype(np.float32) / 32768

    def transcript(self, response_id: str | None = None) -> str:
        return "".join(e.delta for e in self.of(*TRANSCRIPT_DELTAS)
                       if response_id is None or e.response_id == response_id)

    def text(self) -> str:
        return "".join(e.delta for e in self.of(*TEXT_DELTAS))

    def errors(self) -> list[Any]:
        return [e.error for e in self.of("error")]

    def done(self) -> list[Any]:
        """The `response` of each response.done."""
        return [e.response for e in self.of("response.done")]


def is_type(*types: str) -> Callable[[Any], bool]:
    return lambda event: event.type in types


def is_done(status: str | None = None) -> Callable[[Any], bool]:
    return lambda e: e.type == "response.done" and (status is None or e.response.status == status)


async def collect(conn: Any, until: Callable[[Any], bool], timeout: float = 20.0) -> Events:
    """Events up to and including the first one `until` accepts."""
    got = Events()
    try:
        async with asyncio.timeout(timeout):
            while True:
                event = await conn.recv()
                got.items.append(event)
                if until(event):
                    return got
    except TimeoutError:
        raise AssertionError(f"no matching event in {timeout} s; got {got.types()}") from None


async def quiet(conn: Any, seconds: float) -> Events:
    """Whatever arrives in the next `seconds`."""
    got = Events()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while True:
                got.items.append(await conn.recv())
    return got


def rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64)))) if len(pcm) else 0.0


def peak_hz(pcm: np.ndarray, rate: int) -> float:
    """The strongest frequency of `pcm`."""
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return float(np.argmax(spectrum) * rate / len(pcm))
