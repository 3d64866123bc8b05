"""Realtime transcription on the ASR server (/v1/realtime?intent=transcription), driven by the
real `openai` SDK's realtime client against the real app with a fake ASR model."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from openai import AsyncOpenAI

from tests.fakes import FakeAsr
from tests.helpers import speech_24k
from utils.audio import WIRE_SAMPLE_RATE
from web_demo.server.app import LIFECYCLE, make_app
from web_demo.server.config import AsrServiceConfig, HttpConfig
from web_demo.server.engines.asr_models import AsrModels
from web_demo.server.realtime.audio_formats import AudioFormat, encode_audio

CHUNK_S = 0.2


def pcm16(pcm_24k: np.ndarray) -> bytes:
    return encode_audio(pcm_24k, AudioFormat.PCM16)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * WIRE_SAMPLE_RATE), np.float32)


@pytest.fixture
async def asr_app(aiohttp_client: Any) -> AsyncIterator[Any]:
    async def start(*, models: AsrModels, **cfg: Any) -> Any:
        app = make_app(HttpConfig(), asr=models, asr_config=AsrServiceConfig(**cfg))
        client = await aiohttp_client(app)
        await asyncio.wait_for(app[LIFECYCLE].started.wait(), 30)
        return client

    yield start


def sdk(client: Any) -> AsyncOpenAI:
    return AsyncOpenAI(api_key="unused", base_url=f"http://127.0.0.1:{client.server.port}/v1")


async def append(conn: Any, data: bytes, chunk_bytes: int) -> None:
    for start in range(0, len(data), chunk_bytes):
        await conn.input_audio_buffer.append(audio=base64.b64encode(data[start:start + chunk_bytes]).decode())


async def events_until(conn: Any, kind: str, count: int = 1, timeout: float = 20.0) -> list[Any]:
    seen: list[Any] = []

    async def collect() -> None:
        async for event in conn:
            seen.append(event)
            if sum(e.type == kind for e in seen) >= count:
                return

    await asyncio.wait_for(collect(), timeout)
    return seen


async def test_speech_is_cut_by_vad_and_each_segment_transcribed(asr_app) -> None:
    asr = FakeAsr(text="hello there")
    client = await asr_app(models=AsrModels({"fake-asr": asr}))
    said = speech_24k("hello")
    audio = np.concatenate([silence(0.5), said, silence(1.2), said, silence(1.2)])
    async with sdk(client).realtime.connect(extra_query={"intent": "transcription"}) as conn:
        await conn.session.update(session={"type": "transcription", "audio": {"input": {
            "transcription": {"model": "fake-asr", "language": "en"}}}})
        await append(conn, pcm16(audio), int(CHUNK_S * WIRE_SAMPLE_RATE) * 2)
        seen = await events_until(conn, "conversation.item.input_audio_transcription.completed", 2)
    kinds = [e.type for e in seen]
    assert kinds[:2] == ["session.created", "session.updated"]
    assert kinds.count("input_audio_buffer.speech_started") == 2
    assert kinds.count("input_audio_buffer.committed") == 2
    started = [e for e in seen if e.type == "input_audio_buffer.speech_started"]
    completed = [e for e in seen if e.type.endswith("transcription.completed")]
    assert [e.item_id for e in completed] == [e.item_id for e in started]  # one item per segment
    assert all(e.transcript == "hello there" for e in completed)
    # each segment is one utterance: its own speech plus the pre-roll and the silence that ended it
    for request in asr.requests:
        assert request.language == "en"
        assert abs(len(request.pcm_16k) / 16000 - len(said) / WIRE_SAMPLE_RATE) < 1.0
    assert 0.3 < started[0].audio_start_ms / 1000 < 0.9


async def test_without_turn_detection_a_commit_cuts_the_segment(asr_app) -> None:
    asr = FakeAsr(text="manual")
    client = await asr_app(models=AsrModels({"fake-asr": asr}))
    async with sdk(client).realtime.connect(extra_query={"intent": "transcription"}) as conn:
        await conn.session.update(session={"type": "transcription", "audio": {"input": {
            "turn_detection": None, "format": {"type": "audio/pcmu"}}}})
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)).astype(np.float32)  # 1 s, 8 kHz
        await append(conn, encode_audio(tone, AudioFormat.G711_ULAW), 1600)
        await conn.input_audio_buffer.commit()
        seen = await events_until(conn, "conversation.item.input_audio_transcription.completed")
    assert "input_audio_buffer.speech_started" not in [e.type for e in seen]
    assert seen[-1].transcript == "manual"
    (request,) = asr.requests
    assert abs(len(request.pcm_16k) / 16000 - 1.0) < 0.05  # 8 kHz u-law in, 1 s heard


async def test_permessage_deflate_is_declined(asr_app) -> None:
    client = await asr_app(models=AsrModels({"fake-asr": FakeAsr(text="plain")}))
    ws = await client.ws_connect("/v1/realtime?intent=transcription", compress=15)
    assert ws.compress == 0
    assert json.loads((await ws.receive(timeout=5)).data)["type"] == "session.created"


async def test_bad_events_get_error_events_and_the_session_goes_on(asr_app) -> None:
    asr = FakeAsr(text="still here")
    client = await asr_app(models=AsrModels({"fake-asr": asr}))
    ws = await client.ws_connect("/v1/realtime?intent=transcription")
    assert json.loads((await ws.receive()).data)["type"] == "session.created"

    async def answer(event: dict[str, Any] | str) -> dict[str, Any]:
        await ws.send_str(event if isinstance(event, str) else json.dumps(event))
        reply: dict[str, Any] = json.loads((await ws.receive(timeout=5)).data)
        return reply

    cases = [
        ({"type": "input_audio_buffer.append", "audio": "***"}, "invalid_base64"),
        ({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "transcription": {"model": "nope"}}}}}, "model_not_found"),
        ({"type": "session.update", "session": {"type": "realtime"}}, "unsupported_value"),
        ({"type": "response.create"}, "unsupported_value"),
        ({"type": "input_audio_buffer.commit", "event_id": "ev1"}, "invalid_value"),
        ("not json", "invalid_json"),
    ]
    for event, code in cases:
        reply = await answer(event)
        assert reply["type"] == "error" and reply["error"]["code"] == code, (event, reply)
    assert reply["error"]["message"]
    commit_error = (await answer({"type": "input_audio_buffer.commit", "event_id": "ev2"}))["error"]
    assert commit_error["event_id"] == "ev2"
    await ws.send_bytes(b"\x01\x02")
    assert json.loads((await ws.receive(timeout=5)).data)["error"]["code"] == "invalid_json"
    await ws.send_str(json.dumps({"type": "session.update", "session": {
        "type": "transcription", "audio": {"input": {"turn_detection": None}}}}))
    assert json.loads((await ws.receive(timeout=5)).data)["type"] == "session.updated"
    pcm = base64.b64encode(pcm16(speech_24k("hello"))).decode()
    await ws.send_str(json.dumps({"type": "input_audio_buffer.append", "audio": pcm}))
    await ws.send_str(json.dumps({"type": "input_audio_buffer.commit"}))
    kinds = []
    while "conversation.item.input_audio_transcription.completed" not in kinds:
        kinds.append(json.loads((await ws.receive(timeout=5)).data)["type"])
    assert len(asr.requests) == 1


async def test_sessions_beyond_the_limit_are_refused(asr_app) -> None:
    client = await asr_app(models=AsrModels({"fake-asr": FakeAsr()}), max_realtime_sessions=1)
    first = await client.ws_connect("/v1/realtime")
    assert json.loads((await first.receive()).data)["type"] == "session.created"
    second = await client.ws_connect("/v1/realtime")
    refusal = json.loads((await second.receive()).data)
    assert refusal["type"] == "error" and "server full" in refusal["error"]["message"]
    await second.receive()  # the close
    assert second.close_code == 1013
    await first.close()


async def test_an_idle_connection_gets_an_error_event_and_is_closed(asr_app) -> None:
    client = await asr_app(models=AsrModels({"fake-asr": FakeAsr()}), realtime_idle_timeout_s=0.3)
    ws = await client.ws_connect("/v1/realtime")
    assert json.loads((await ws.receive()).data)["type"] == "session.created"
    error = json.loads((await ws.receive(timeout=3)).data)
    assert error["type"] == "error" and error["error"]["code"] == "idle_timeout"
    await ws.receive(timeout=3)
    assert ws.closed


async def test_a_client_that_never_reads_is_cut_and_others_go_on(asr_app, caplog) -> None:
    client = await asr_app(models=AsrModels({"fake-asr": FakeAsr(text="still here")}),
                           realtime_write_timeout_s=0.5)
    greedy = await client.ws_connect("/v1/realtime")  # never reads: its buffers fill up
    with pytest.raises((ConnectionError, RuntimeError)):
        for _ in range(200):
            for _ in range(500):
                await greedy.send_str("not json")  # each answered with an error event
            await asyncio.sleep(0.01)
    assert "client is not reading" in caplog.text
    async with sdk(client).realtime.connect(extra_query={"intent": "transcription"}) as conn:
        await conn.session.update(session={"type": "transcription",
                                           "audio": {"input": {"turn_detection": None}}})
        await append(conn, pcm16(speech_24k("hello")), 9600)
        await conn.input_audio_buffer.commit()
        seen = await events_until(conn, "conversation.item.input_audio_transcription.completed")
    assert seen[-1].transcript == "still here"
