"""Upstream Fun-Audio-Chat's browser client, as it behaves on the wire, against our server.

That client connects to /api/simplex with its sampling settings in the query string, streams
the microphone for the whole connection (also while it waits for the answer), and ends a turn
only with pause (03 02). Nothing in between may need a change on its side.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlencode

import numpy as np

from tests.fakes import FakeEngine
from tests.helpers import speech_24k
from tests.unit.test_sampling_query import UPSTREAM_QUERY
from utils.audio import WIRE_SAMPLE_RATE
from utils.opus import encode_browser_pages
from web_demo.chat_client import PAGE_S, ChatClient
from web_demo.server.engines.base import SamplingOptions
from web_demo.server.protocol import Control


class UpstreamMic:
    """One continuous Ogg/Opus stream sent page by page in real time, as the client's recorder
    does from the moment the socket opens until it closes."""

    def __init__(self, chat: ChatClient, pcm_24k: np.ndarray) -> None:
        self._chat, self._pages = chat, encode_browser_pages(pcm_24k)
        self.sent = 0
        self.task = asyncio.create_task(self._stream())

    async def _stream(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for page in self._pages:
            await self._chat.ws.send_bytes(b"\x01" + page)
            self.sent += 1
            await asyncio.sleep(max(0.0, t0 + self.sent * PAGE_S - loop.time()))

    async def wait_pages(self, count: int) -> None:
        while self.sent < count:
            await asyncio.sleep(PAGE_S / 2)


async def connect_upstream(client, query: dict[str, str]) -> ChatClient:
    chat = ChatClient(await client.ws_connect("/api/simplex?" + urlencode(query)))
    assert await chat.handshake() == b"\x00\x00\x00"
    return chat


def with_silence(pcm_24k: np.ndarray, seconds: float) -> np.ndarray:
    return np.concatenate([pcm_24k, np.zeros(int(seconds * WIRE_SAMPLE_RATE), np.float32)])


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * WIRE_SAMPLE_RATE)) / WIRE_SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


async def test_a_full_turn_from_the_upstream_client(chat_server) -> None:
    engine = FakeEngine(audio_s=0.6)
    client, _ = await chat_server(engine)
    chat = await connect_upstream(client, UPSTREAM_QUERY)
    said = speech_24k("hello")
    mic = UpstreamMic(chat, with_silence(said, 4.0))
    # no start: it records from the handshake; the pause comes once the speech has been sent
    await mic.wait_pages(2 + int(len(said) / WIRE_SAMPLE_RATE / PAGE_S))
    await chat.control(Control.PAUSE)
    reply = await chat.receive_reply(timeout=30)
    assert mic.sent < len(mic._pages)  # the microphone was still streaming during the answer
    assert reply.errors == []
    assert reply.texts[0] == "[Processing...]" and reply.final == "\n[Final: Hello there.]"
    assert len(reply.pcm_24k) > 0.4 * WIRE_SAMPLE_RATE
    (request,) = engine.requests
    assert abs(len(request.user_audio_16k) / 16000 - len(said) / WIRE_SAMPLE_RATE) < 0.2
    assert request.sampling == SamplingOptions(
        text_temperature=0.7, text_top_k=25, speech_temperature=0.8, speech_top_k=250,
        text_seed=776919, speech_seed=278161, repetition_penalty=1.0, repetition_window=64)
    await mic.task


async def test_audio_streamed_while_paused_is_not_part_of_the_next_turn(chat_server) -> None:
    engine = FakeEngine(audio_s=0.2)
    client, _ = await chat_server(engine)
    chat = await connect_upstream(client, UPSTREAM_QUERY)
    # one stream: 0.8 s tone (turn 1), 1.6 s tone while paused (dropped), 0.6 s tone (turn 2)
    mic = UpstreamMic(chat, np.concatenate([tone(0.8), tone(1.6) * 0.5, tone(0.6), tone(0.4) * 0]))
    await mic.wait_pages(2 + 20)
    await chat.control(Control.PAUSE)
    await chat.receive_reply()
    await mic.wait_pages(2 + 60)
    await chat.control(Control.START)  # the client's next talk
    await mic.wait_pages(2 + 75)
    await chat.control(Control.PAUSE)
    await chat.receive_reply()
    await mic.task
    first, second = engine.requests
    assert 0.7 < len(first.user_audio_16k) / 16000 < 1.0
    assert 0.5 < len(second.user_audio_16k) / 16000 < 0.8


async def test_without_a_query_the_engine_keeps_its_own_settings(chat_server) -> None:
    engine = FakeEngine(audio_s=0.2)
    client, _ = await chat_server(engine)
    chat = await connect_upstream(client, {})
    await chat.turn(encode_browser_pages(tone(0.5)))
    await chat.receive_reply()
    assert engine.requests[0].sampling is None


async def test_a_query_value_that_is_not_a_number_is_refused_before_the_upgrade(chat_server) -> None:
    client, _ = await chat_server(FakeEngine())
    for path in ("/api/simplex", "/api/chat"):
        response = await client.get(path + "?text_temperature=hot", headers={
            "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        assert response.status == 400
        error = json.loads(await response.text())["error"]
        assert "text_temperature must be a number" in error["message"]
        assert error["param"] == "text_temperature"
