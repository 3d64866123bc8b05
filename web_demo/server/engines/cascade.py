"""Cascade engine: ASR -> responder -> TTS, sentence by sentence.

The CPU stand-in for Fun-Audio-Chat: real speech in, real speech out, so the whole serving
stack runs and is tested on a machine with no GPU and no weights. Each finished sentence is
synthesised as soon as the responder completes it, so the first audio leaves before the
whole reply is known. Each session's conversation keeps its history as text.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncGenerator
from typing import Any

from web_demo.server.engines.base import (
    AsrEngine,
    AudioDelta,
    ReplyEvent,
    ReplyRequest,
    SamplingOptions,
    SynthesisRequest,
    TextDelta,
    ToolCall,
    ToolResult,
    TranscriptionRequest,
    TtsEngine,
    UserTranscript,
)
from web_demo.server.engines.responder import ChatTurn, ReplyPiece, Responder

DEFAULT_SYSTEM_PROMPT = "You are a helpful voice assistant. Answer briefly and naturally."
_SENTENCE_END = re.compile(r"(?<=[.!?;:。！？；])\s+|\n+")


class CascadeEngine:
    name = "cascade"

    def __init__(self, *, asr: AsrEngine, responder: Responder, tts: TtsEngine,
                 language: str | None = None, voice: str | None = None) -> None:
        self.asr = asr
        self.responder = responder
        self.tts = tts
        self.language = language
        self.voice = voice

    async def start(self) -> None:
        await self.asr.start()
        await self.tts.start()
        await self.responder.start()

    async def aclose(self) -> None:
        await self.responder.aclose()
        await self.tts.aclose()
        await self.asr.aclose()

    def open_session(self, session_id: str, *, history_turns: int) -> CascadeConversation:
        return CascadeConversation(self, history_turns=history_turns)

    def health(self) -> dict[str, Any]:
        asr, tts = self.asr.health(), self.tts.health()
        workers_ok = asr.get("alive", True) and tts.get("alive", True)
        return {"status": "healthy" if workers_ok else "degraded", "engine": self.name,
                "models": {"asr": asr.get("model"), "tts": tts.get("model"),
                           **self.responder.health()},
                "devices": {"asr": asr.get("device"), "tts": tts.get("device")},
                "workers": {self.asr.name: asr, self.tts.name: tts}}


class CascadeConversation:
    """One session's text history; the user side is what the ASR heard."""

    def __init__(self, engine: CascadeEngine, *, history_turns: int) -> None:
        self._engine = engine
        self._history_turns = history_turns
        self._history: list[ChatTurn] = []
        self._heard_user: str | None = None  # transcript of the reply in progress
        self._tool_results: tuple[ToolResult, ...] = ()  # its input, when it was tool results
        self._calls: list[ToolCall] = []  # the calls it made

    async def reply(self, request: ReplyRequest) -> AsyncGenerator[ReplyEvent, None]:
        engine = self._engine
        self._tool_results, self._calls = request.tool_results, []
        if request.tool_results or request.user_text is not None:  # nothing to hear
            self._heard_user = request.user_text or ""
        else:
            heard = await engine.asr.transcribe(
                TranscriptionRequest(pcm_16k=request.user_audio_16k, language=engine.language))
            self._heard_user = heard.text
            yield UserTranscript(heard.text)
        system_prompt = request.system_prompt or DEFAULT_SYSTEM_PROMPT
        sampling = request.sampling or SamplingOptions()
        pieces = engine.responder.respond(system_prompt, tuple(self._history), self._heard_user,
                                          tools=request.tools, tool_results=request.tool_results,
                                          temperature=sampling.text_temperature,
                                          max_tokens=sampling.max_text_tokens)
        async with contextlib.aclosing(sentences(pieces)) as replies:
            async for sentence in replies:
                if isinstance(sentence, ToolCall):  # not spoken: the client runs it
                    self._calls.append(sentence)
                    yield sentence
                    continue
                yield TextDelta(sentence)
                speech = engine.tts.synthesize(SynthesisRequest(text=sentence.strip(),
                                                                voice=request.voice or engine.voice))
                async with contextlib.aclosing(speech) as chunks:
                    async for chunk in chunks:
                        yield AudioDelta(chunk.pcm)

    def commit_reply(self, heard_text: str) -> None:
        if self._heard_user is None:  # the turn failed or was cut before anything was heard
            return
        self._history.append(ChatTurn(user=self._heard_user, assistant=heard_text,
                                      tool_results=self._tool_results, tool_calls=tuple(self._calls)))
        del self._history[:max(len(self._history) - self._history_turns, 0)]
        self._heard_user = None

    def reset(self) -> None:
        self._history.clear()
        self._heard_user = None

    async def aclose(self) -> None:
        self.reset()

    @property
    def history(self) -> tuple[ChatTurn, ...]:
        return tuple(self._history)


async def sentences(pieces: AsyncGenerator[ReplyPiece, None]) -> AsyncGenerator[ReplyPiece, None]:
    """Regroups streamed text pieces into sentences (each keeps its trailing space); tool
    calls pass through, after the text before them."""
    buffer = ""
    async with contextlib.aclosing(pieces):
        async for piece in pieces:
            if isinstance(piece, ToolCall):
                if buffer.strip():
                    yield buffer
                buffer = ""
                yield piece
                continue
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
