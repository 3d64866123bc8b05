"""Cascade engine: ASR worker -> responder -> TTS worker, sentence by sentence.

The CPU stand-in for Fun-Audio-Chat: real speech in, real speech out, so the whole serving
stack runs and is tested on a machine with no GPU and no weights. Each finished sentence is
synthesised as soon as the responder completes it, so the first audio leaves before the
whole reply is known.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

from utils.audio import WIRE_SAMPLE_RATE
from web_demo.server.engines.base import (
    AsrEngine, AudioDelta, ReplyEvent, ReplyRequest, SynthesisRequest, TextDelta,
    TranscriptionRequest, TtsEngine, UserTranscript)
from web_demo.server.engines.responder import Responder

_SENTENCE_END = re.compile(r"(?<=[.!?;:。！？；])\s+|\n+")


class CascadeEngine:
    name = "cascade"

    def __init__(self, *, asr: AsrEngine, responder: Responder, tts: TtsEngine,
                 language: str | None = None, voice: str | None = None) -> None:
        self._asr = asr
        self._responder = responder
        self._tts = tts
        self._language = language
        self._voice = voice

    async def start(self) -> None:
        await self._asr.start()
        await self._tts.start()
        await self._responder.start()

    async def aclose(self) -> None:
        await self._responder.aclose()
        await self._tts.aclose()
        await self._asr.aclose()

    async def reply(self, request: ReplyRequest) -> AsyncIterator[ReplyEvent]:
        heard = await self._asr.transcribe(
            TranscriptionRequest(request.user_audio_16k, language=self._language))
        yield UserTranscript(heard.text)
        async for sentence in sentences(self._responder.respond(request, heard.text)):
            yield TextDelta(sentence)
            speech = SynthesisRequest(sentence.strip(), voice=self._voice,
                                      sample_rate=WIRE_SAMPLE_RATE)
            # TtsEngine.synthesize is typed AsyncIterator, but engines return async generators.
            async with contextlib.aclosing(self._tts.synthesize(speech)) as chunks:  # type: ignore[type-var]
                async for chunk in chunks:
                    yield AudioDelta(chunk.pcm)

    def end_session(self, session_id: str) -> None:
        return None

    def health(self) -> dict[str, Any]:
        asr, tts = self._asr.health(), self._tts.health()
        workers_ok = asr.get("alive", True) and tts.get("alive", True)
        return {"status": "ok" if workers_ok else "degraded", "engine": self.name,
                "models": {"asr": asr.get("model"), "tts": tts.get("model"),
                           **self._responder.health()},
                "devices": {"asr": asr.get("device"), "tts": tts.get("device")},
                "workers": {self._asr.name: asr, self._tts.name: tts}}


async def sentences(pieces: AsyncIterator[str]) -> AsyncIterator[str]:
    """Regroups streamed text pieces into sentences (each keeps its trailing space)."""
    buffer = ""
    async for piece in pieces:
        buffer += piece
        *complete, buffer = _split_keep_space(buffer)
        for sentence in complete:
            yield sentence
    if buffer.strip():
        yield buffer


def _split_keep_space(text: str) -> list[str]:
    parts, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        parts.append(text[start:match.end()])
        start = match.end()
    parts.append(text[start:])
    return [p for p in parts[:-1] if p.strip()] + [parts[-1]]
