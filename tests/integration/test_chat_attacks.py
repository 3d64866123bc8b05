"""Hostile and broken clients against the real /api/chat app: each must cost only itself."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import aiohttp
import pytest

from tests.fakes import FakeEngine
from tests.helpers import tone_pages
from web_demo.chat_client import ChatClient
from web_demo.server.app import CHAT
from web_demo.server.errors import EngineDead
from web_demo.server.protocol import Control
from web_demo.server.session import ChatSession

PAGES = tone_pages(0.6)
GOOD_PAGE = PAGES[3]

async def frames_until_close(chat: ChatClient) -> list[bytes]:
    """Every binary frame the server sends until it closes the socket."""
    frames = []
    while (msg := await chat.ws.receive(timeout=5)).type is aiohttp.WSMsgType.BINARY:
        frames.append(msg.data)
    return frames


HOSTILE_FRAMES: list[bytes | str] = [
    b"\x01OggS" + os.urandom(200),  # garbage after the capture pattern (sphn ValueError)
    b"\x01" + GOOD_PAGE[:40] + GOOD_PAGE,  # a truncated page followed by a valid one
    b"\x01" + GOOD_PAGE[:-1],
    b"\x01OggS\x01" + bytes(40),
    b"\x01" + b"\x00" * 100,
    b"\x04" + b"[" * 50_000 + b"]" * 50_000,  # RecursionError in the JSON parser
    b'\x04{"n": ' + b"9" * 5000 + b"}",  # ValueError: too many digits
    b"\x04[1, 2]",
    b"\x04\xff\xfe",
    b'\x04{"system_prompt": 5}',
    b'\x04{"system_prompt": "' + b"x" * 20_000 + b'"}',
    b"\x03", b"\x03\x00\x00", b"\x03\x09",
    b"\x05oops", b"\x07", b"\xff" + b"x" * 10,
    json.dumps({"type": "control", "action": ["start"]}),  # TypeError in a membership test
    json.dumps({"type": "control", "action": {"a": 1}}),
    json.dumps({"type": "control", "action": "x" * 10_000}),
    json.dumps({"type": "metadata", "data": []}),
    json.dumps({"type": ["control"]}),
    "[]", "null", "", "not json", json.dumps({"type": "control"}),
]


@pytest.mark.parametrize("frame", HOSTILE_FRAMES, ids=lambda f: repr(f[:24]))
async def test_each_hostile_frame_gets_one_error_frame_and_the_session_lives(chat_server, frame) -> None:
    engine = FakeEngine(audio_s=0.2)
    _, connect = await chat_server(engine)
    chat = await connect()
    await chat.send_pages(PAGES[:3])  # headers and some audio first, as a browser would
    if isinstance(frame, str):
        await chat.ws.send_str(frame)
    else:
        await chat.ws.send_bytes(frame)
    got = await chat.receive_for(0.4)
    assert len(got.errors) == 1 and got.errors[0].startswith("bad frame:"), got.errors
    assert len(got.errors[0]) < 300  # hostile input is not reflected back at length
    await chat.turn(PAGES)
    reply = await chat.receive_reply()
    assert reply.final is not None and reply.errors == []
    assert len(reply.pcm_24k) > 0.15 * 24000  # the decoder survived the bad bytes


async def test_zombie_scenario_leaves_no_session_behind(chat_server) -> None:
    """Six clients each send start, a text frame and a bad Ogg frame at once, then go."""
    client, connect = await chat_server(FakeEngine(audio_s=0.2), max_sessions=6)
    zombies = [await connect() for _ in range(6)]
    for chat in zombies:
        await asyncio.gather(chat.control(Control.START), chat.ws.send_str("hello"),
                             chat.ws.send_bytes(b"\x01OggS" + os.urandom(64)))
    for chat in zombies:
        assert len((await chat.receive_for(0.3)).errors) == 2  # both bad frames answered
    for i, chat in enumerate(zombies):
        if i % 2:
            await chat.ws.close()
        else:  # vanish without a close frame
            chat.ws._response.connection.transport.abort()  # type: ignore[union-attr]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 1.0
    while (await (await client.get("/health")).json())["sessions"]["active"] and loop.time() < deadline:
        await asyncio.sleep(0.05)
    assert (await (await client.get("/health")).json())["sessions"]["active"] == 0
    newcomer = await connect()
    await newcomer.turn(PAGES)
    assert (await newcomer.receive_reply()).final is not None


async def test_client_that_never_reads_is_cut_once_its_outbox_is_full(chat_server, caplog,
                                                                       monkeypatch) -> None:
    acted_on_after_cut = []  # frames the cut client had already sent are dropped unread
    bad_frame = ChatSession.bad_frame

    def recording_bad_frame(self, exc, answer=None):
        acted_on_after_cut.append(self._aborted is not None)
        bad_frame(self, exc, answer)

    monkeypatch.setattr(ChatSession, "bad_frame", recording_bad_frame)
    client, connect = await chat_server(FakeEngine(), max_outbox_frames=64, write_timeout_s=0.5)
    bystander = await connect()
    greedy = await client.ws_connect("/api/chat")  # never reads: its buffers fill up
    flood = b"\x03\x09"  # each answered with a 0x05 frame
    with pytest.raises((ConnectionError, RuntimeError)):
        for _ in range(200):
            for _ in range(500):
                await greedy.send_bytes(flood)
            await asyncio.sleep(0.01)
    assert "client is not reading" in caplog.text
    assert acted_on_after_cut and not any(acted_on_after_cut)
    health = await (await client.get("/health")).json()
    assert health["sessions"]["active"] == 1
    await bystander.turn(PAGES)
    assert (await bystander.receive_reply()).final is not None


async def test_peer_that_misses_heartbeats_is_closed(chat_server) -> None:
    client, _ = await chat_server(ws_heartbeat_s=0.2)
    await client.ws_connect("/api/chat", autoping=False)  # never answers the server's pings
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2.0
    active = 1
    while active and loop.time() < deadline:
        await asyncio.sleep(0.1)
        active = (await (await client.get("/health")).json())["sessions"]["active"]
    assert active == 0


async def test_barge_in_waits_for_a_fast_engine_to_let_go(chat_server) -> None:
    """The engine produced the whole reply at once; the reply task sleeps on pacing."""
    engine = FakeEngine(audio_s=10.0)
    _, connect = await chat_server(engine)
    chat = await connect()
    await chat.turn(PAGES)
    await chat.receive_until_audio()
    await chat.control(Control.START)
    await chat.ws.send_bytes(b"\x07")  # answered only after START has been handled
    while not (await chat.receive_for(0.05)).errors:
        pass
    assert len(engine.stopped_at) == 1  # its cleanup ran inside the barge-in, not later


async def test_writer_crash_closes_with_1011_and_an_error_frame(chat_server, monkeypatch) -> None:
    from utils.opus import OpusStreamEncoder

    def broken(self, pcm):
        raise ValueError("encoder exploded")

    client, connect = await chat_server(FakeEngine(audio_s=0.4), opus_codec="inline")
    assert (await (await client.get("/health")).json())["opus_codec"] == {"mode": "inline"}
    chat = await connect()
    monkeypatch.setattr(OpusStreamEncoder, "encode", broken)
    await chat.turn(PAGES)
    frames = await frames_until_close(chat)
    assert chat.ws.close_code == aiohttp.WSCloseCode.INTERNAL_ERROR
    assert any(f[0] == 0x05 and b"internal server error" in f for f in frames)
    monkeypatch.undo()
    other = await connect()
    await other.turn(PAGES)
    assert (await other.receive_reply()).final is not None


async def test_killed_opus_codec_fails_its_sessions_not_the_server(chat_server) -> None:
    client, connect = await chat_server(FakeEngine(audio_s=2.0))
    codecs = client.app[CHAT].codecs
    assert len(codecs.processes) == 2  # the default pool
    chat = await connect()  # its codec is in the first child, the bystander's in the second
    bystander = await connect()
    for c in (chat, bystander):
        await c.turn(PAGES)
        await c.receive_until_audio()
    health = await (await client.get("/health")).json()
    assert health["opus_codec"] == {"mode": "process", "processes": [
        {"pid": p.pid, "alive": True, "streams": 1} for p in codecs.processes]}
    killed = codecs.processes[0].pid
    os.kill(killed, signal.SIGKILL)  # mid-reply
    frames = await frames_until_close(chat)
    assert chat.ws.close_code == aiohttp.WSCloseCode.INTERNAL_ERROR
    assert any(f[0] == 0x05 and b"internal server error" in f for f in frames)
    rest = await bystander.receive_reply()
    assert rest.final is not None and rest.errors == [] and len(rest.audio_pages) > 0
    first = (await (await client.get("/health")).json())["opus_codec"]["processes"][0]
    assert first == {"pid": killed, "alive": False, "streams": 0}
    other = await connect()  # a new child for the new session
    await other.turn(PAGES)
    reply = await other.receive_reply()
    assert reply.final is not None and reply.errors == [] and len(reply.audio_pages) > 0
    first = (await (await client.get("/health")).json())["opus_codec"]["processes"][0]
    assert first["alive"] and first["pid"] != killed and first["streams"] == 1


async def test_dead_engine_closes_the_socket_with_1011(chat_server) -> None:
    _, connect = await chat_server(FakeEngine(fail_with=EngineDead("model thread crashed")))
    chat = await connect()
    await chat.turn(PAGES)
    frames = await frames_until_close(chat)
    assert chat.ws.close_code == aiohttp.WSCloseCode.INTERNAL_ERROR
    assert any(f[0] == 0x05 and b"model thread crashed" in f for f in frames)


async def test_frame_of_exactly_the_limit_is_accepted(chat_server) -> None:
    _, connect = await chat_server(max_frame_bytes=4096)
    chat = await connect()
    await chat.ws.send_bytes(b"\x04" + json.dumps({"pad": "x" * (4096 - 12)}).encode())
    assert len(b"\x04" + json.dumps({"pad": "x" * (4096 - 12)}).encode()) == 4096
    got = await chat.receive_for(0.3)
    assert got.errors == [] and not chat.ws.closed


async def test_an_idle_connection_is_told_and_closed(chat_server) -> None:
    _, connect = await chat_server(idle_timeout_s=0.4, ping_interval_s=0.1)
    chat = await connect()
    started = asyncio.get_running_loop().time()
    idle = await chat.receive_for(2.0)
    assert any("no client frame for 0.4 s" in e for e in idle.errors), idle.errors
    assert chat.ws.closed and chat.ws.close_code == 1000
    assert asyncio.get_running_loop().time() - started < 1.5
    # a client that keeps talking is not idle, and neither is one waiting for a long reply
    busy = await connect()
    for _ in range(6):
        await busy.send_pages(PAGES[:3])
        await asyncio.sleep(0.15)
    assert not busy.ws.closed
