"""Loopback engine: replies with the user's own turn audio.

A diagnostic for the audio path (mic -> Opus -> PCM -> Opus -> speaker) and the engine
behind the load benchmark: it costs nothing, so measurements show the serving overhead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from utils.audio import MODEL_SAMPLE_RATE, WIRE_SAMPLE_RATE, resample
from web_demo.server.engines.base import AudioDelta, ReplyEvent, ReplyRequest, TextDelta

CHUNK_SAMPLES_24K = 4800  # 200 ms, the size of one Fun-Audio-Chat LLM step's audio


class LoopbackEngine:
    name = "loopback"

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def open_session(self, session_id: str, *, history_turns: int) -> LoopbackConversation:
        return LoopbackConversation()

    def health(self) -> dict[str, Any]:
        return {"engine": self.name, "models": {}}


class LoopbackConversation:
    """Keeps no history: every reply is the turn's own audio."""

    async def reply(self, request: ReplyRequest) -> AsyncGenerator[ReplyEvent, None]:
        if request.user_text is not None:
            yield TextDelta(f"[loopback] you typed: {request.user_text}")
            return
        seconds = len(request.user_audio_16k) / MODEL_SAMPLE_RATE
        yield TextDelta(f"[loopback] {seconds:.1f} s of your audio")
        # off the event loop, as a real engine's work is: s2s_load measures the server's
        # path, and on the loop this was 6% of it at 300 sessions
        pcm_24k = await asyncio.to_thread(resample, request.user_audio_16k, MODEL_SAMPLE_RATE,
                                          WIRE_SAMPLE_RATE)
        for start in range(0, len(pcm_24k), CHUNK_SAMPLES_24K):
            yield AudioDelta(pcm_24k[start:start + CHUNK_SAMPLES_24K])

    def commit_reply(self, heard_text: str) -> None:
        return None

    def reset(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
