"""Realtime transcription against the ASR server process (CPU Whisper stand-in), with the
real `openai` SDK's realtime client: speech in, cut by the server's VAD, words out."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from openai import AsyncOpenAI

from tests.e2e.conftest import RunningServer, start_server, stop_server
from tests.helpers import speech_24k
from utils.audio import WIRE_SAMPLE_RATE
from web_demo.server.realtime.audio_formats import AudioFormat, encode_audio

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def asr_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    log: Path = tmp_path_factory.mktemp("asr") / "asr_server.log"
    server = start_server([], log, module="web_demo.server.asr_server")
    yield server
    stop_server(server)


async def test_spoken_sentence_comes_back_as_a_transcript(asr_server: RunningServer) -> None:
    client = AsyncOpenAI(api_key="unused", base_url=f"http://127.0.0.1:{asr_server.port}/v1")
    audio = np.concatenate([speech_24k("fox"), np.zeros(WIRE_SAMPLE_RATE * 3 // 2, np.float32)])
    data = encode_audio(audio, AudioFormat.PCM16)
    chunk = WIRE_SAMPLE_RATE // 5 * 2  # 200 ms of PCM16
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        await conn.session.update(session={"type": "transcription", "audio": {"input": {
            "transcription": {"model": "whisper-1", "language": "en"}}}})
        for start in range(0, len(data), chunk):
            await conn.input_audio_buffer.append(audio=base64.b64encode(data[start:start + chunk]).decode())
        kinds: list[str] = []

        async def until_completed() -> str:
            async for event in conn:
                kinds.append(event.type)
                if event.type == "conversation.item.input_audio_transcription.completed":
                    return str(event.transcript)
            raise AssertionError(f"closed before a transcript: {kinds}")

        transcript = await asyncio.wait_for(until_completed(), 120)
    assert "input_audio_buffer.speech_stopped" in kinds
    words = set(transcript.lower().replace(".", " ").replace(",", " ").split())
    assert {"quick", "brown", "fox"} <= words, transcript
