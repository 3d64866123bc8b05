"""Server-side VAD on /api/chat: the real app, a fake engine, real Opus and the real silero-vad.

No test here sends a control frame unless it says so: the server alone ends turns on silence.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import numpy as np

from tests.fakes import FakeEngine, wait_until
from tests.helpers import speech_24k
from utils.audio import MODEL_SAMPLE_RATE, WIRE_SAMPLE_RATE
from utils.opus import encode_browser_pages
from web_demo.chat_client import Reply
from web_demo.server.protocol import Control

LEAD_S, TAIL_S = 0.5, 1.5
HELLO = speech_24k("hello")  # ~2.2 s of speech
HELLO_PAGES = encode_browser_pages(np.concatenate(
    [np.zeros(int(LEAD_S * WIRE_SAMPLE_RATE), np.float32), HELLO,
     np.zeros(int(TAIL_S * WIRE_SAMPLE_RATE), np.float32)]))
SPEECH_PAGES = encode_browser_pages(np.concatenate(
    [np.zeros(int(LEAD_S * WIRE_SAMPLE_RATE), np.float32), HELLO]))  # a second Ogg stream...
SILENCE_PAGES = encode_browser_pages(np.zeros(int(TAIL_S * WIRE_SAMPLE_RATE), np.float32))  # ...a third


def vad_frames(reply: Reply) -> list[dict[str, Any]]:
    return [m for m in reply.metadata if m.get("type") == "vad"]


def vad_events(reply: Reply) -> list[str]:
    return [m["event"] for m in vad_frames(reply)]


async def test_silence_alone_ends_the_turn_and_vad_events_arrive_in_order(chat_server) -> None:
    engine = FakeEngine(audio_s=0.4)
    _, connect = await chat_server(engine)
    chat = await connect("?vad=1")
    await chat.send_pages(HELLO_PAGES)  # and nothing else: no start, no endTurn
    reply = await chat.receive_reply(timeout=10)
    assert reply.final == "\n[Final: Hello there.]" and reply.errors == []
    assert [m["type"] for m in reply.metadata] == ["vad", "vad", "vad", "transcript"]
    assert vad_events(reply) == ["settings", "speech_started", "speech_stopped"]
    settings, started, stopped = reply.metadata[:3]
    assert settings == {"type": "vad", "event": "settings", "on": True, "threshold": 0.5,
                        "silence_ms": 500}
    assert LEAD_S + 0.1 < started["at_s"] < LEAD_S + 0.5
    assert started["at_s"] + 1.5 < stopped["at_s"] < LEAD_S + len(HELLO) / WIRE_SAMPLE_RATE + 0.3
    # The turn is the speech, from a short pre-roll before its onset to the silence that ended it.
    (request,) = engine.requests
    heard_s = len(request.user_audio_16k) / MODEL_SAMPLE_RATE
    expected_s = stopped["at_s"] + 0.5 - (started["at_s"] - 0.3)
    assert abs(heard_s - expected_s) < 0.25, (heard_s, expected_s)
    assert np.abs(request.user_audio_16k[:1600]).max() < 0.05  # the pre-roll is still quiet
    assert len((await chat.receive_for(1.0)).texts) == 0  # one turn, one reply


async def test_speech_during_an_answer_cancels_it_and_the_new_turn_is_answered(chat_server) -> None:
    engine = FakeEngine(audio_s=8.0, text_pieces=("first",))
    _, connect = await chat_server(engine)
    chat = await connect("?vad=1")
    await chat.send_pages(HELLO_PAGES)
    first = await chat.receive_until_audio(timeout=10)  # the first answer is playing
    assert vad_events(first) == ["settings", "speech_started", "speech_stopped"]
    engine.audio_s, engine.text_pieces = 0.4, ("second",)
    await chat.send_pages(SPEECH_PAGES)  # the user talks over it, and has not stopped yet
    await wait_until(lambda: len(engine.stopped_at) == 1, timeout=5)  # the engine let go of it
    assert len(engine.requests) == 1  # the new turn is still being spoken
    await chat.send_pages(SILENCE_PAGES)
    rest = await chat.receive_reply(timeout=10)
    assert rest.final == "\n[Final: second]"  # the first answer never finished
    assert "\n[Final: first]" not in rest.texts
    assert vad_events(rest) == ["speech_started", "speech_stopped"]
    assert len(engine.requests) == 2 and len(engine.stopped_at) == 1
    # 8 s were coming; what arrived is what was sent ahead before the barge-in, plus 0.4 s.
    assert len(first.pcm_24k) + len(rest.pcm_24k) < 3.0 * WIRE_SAMPLE_RATE
    (conversation,) = engine.conversations.values()
    assert conversation.committed == ["first", "second"]


async def test_without_vad_the_same_audio_gets_no_reply(chat_server) -> None:
    engine = FakeEngine(audio_s=0.4)
    _, connect = await chat_server(engine)
    chat = await connect("?extras=1")
    await chat.send_pages(HELLO_PAGES)
    quiet = await chat.receive_for(2.0)
    assert quiet.texts == [] and quiet.metadata == [] and engine.requests == []
    await chat.control(Control.PAUSE)  # as before: recorded from the handshake, sent on pause
    reply = await chat.receive_reply(timeout=10)
    assert vad_events(reply) == []
    assert len(engine.requests[0].user_audio_16k) > (LEAD_S + 3.0) * MODEL_SAMPLE_RATE


async def test_a_metadata_frame_turns_vad_on_mid_session(chat_server) -> None:
    engine = FakeEngine(audio_s=0.4)
    _, connect = await chat_server(engine)
    chat = await connect()
    await chat.turn(encode_browser_pages(HELLO))  # a button turn first
    assert vad_events(await chat.receive_reply(timeout=10)) == []  # extras are off
    await chat.send_metadata({"vad": True, "vad_silence_ms": 700})
    await chat.send_pages(HELLO_PAGES)
    reply = await chat.receive_reply(timeout=10)
    assert vad_events(reply) == ["settings", "speech_started", "speech_stopped"]
    assert reply.metadata[0]["silence_ms"] == 700
    assert len(engine.requests) == 2
    await chat.send_metadata({"vad": False})
    await chat.send_pages(HELLO_PAGES)
    off = await chat.receive_for(2.0)
    assert vad_frames(off) == [{"type": "vad", "event": "settings", "on": False,
                                "threshold": 0.5, "silence_ms": 700}]
    assert off.texts == [] and len(engine.requests) == 2


async def test_vad_can_be_asked_for_without_extras(chat_server) -> None:
    engine = FakeEngine(audio_s=0.4)
    _, connect = await chat_server(engine)
    chat = await connect("?vad=1&extras=0")
    await chat.send_pages(HELLO_PAGES)
    reply = await chat.receive_reply(timeout=10)
    assert reply.final is not None and reply.metadata == []
    assert (await chat.receive_for(0.5)).metadata == []  # nor the latency report after it


async def test_bad_vad_values_get_an_error_frame_and_the_session_goes_on(chat_server) -> None:
    engine = FakeEngine(audio_s=0.4)
    _, connect = await chat_server(engine)
    chat = await connect("?vad=1&vad_silence_ms=400")
    await chat.send_metadata({"vad_threshold": "loud"})
    await chat.send_metadata({"vad": "maybe"})
    got = await chat.receive_for(0.5)
    assert got.errors == ["bad frame: vad_threshold must be a number, got 'loud'",
                          "bad frame: vad must be true or false, got 'maybe'"]
    assert vad_events(got) == ["settings"]  # the one sent at the start; nothing changed since
    await chat.send_metadata({"vad_threshold": 7})  # out of range: clamped, and said so
    clamped = await chat.receive_for(0.5)
    assert vad_frames(clamped) == [{"type": "vad", "event": "settings", "on": True,
                                 "threshold": 0.95, "silence_ms": 400}]
    await chat.send_metadata({"vad_threshold": 0.5})
    await chat.send_pages(HELLO_PAGES)  # still hands-free
    assert (await chat.receive_reply(timeout=10)).final is not None


async def test_a_bad_vad_query_is_refused_with_an_error_frame(chat_server) -> None:
    _, connect = await chat_server()
    chat = await connect("?vad=1&vad_threshold=abc", handshake=False)
    msg = await chat.ws.receive(timeout=5)
    assert msg.data == b"\x05bad query: vad_threshold must be a number, got 'abc'"
    assert (await chat.ws.receive(timeout=5)).type is aiohttp.WSMsgType.CLOSE
    assert chat.ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION


async def test_buttons_still_work_with_vad_on(chat_server) -> None:
    engine = FakeEngine(audio_s=0.4)
    _, connect = await chat_server(engine)
    chat = await connect("?vad=1")
    # start: the turn is recorded from the button on, leading silence included; VAD ends it.
    await chat.control(Control.START)
    await chat.send_pages(HELLO_PAGES)
    await chat.receive_reply(timeout=10)
    heard_s = len(engine.requests[0].user_audio_16k) / MODEL_SAMPLE_RATE
    assert heard_s > LEAD_S + len(HELLO) / WIRE_SAMPLE_RATE
    # endTurn before the silence: the button ends the turn; the VAD's stop adds no second one.
    speech_only = encode_browser_pages(HELLO)
    await chat.send_pages(speech_only[:len(speech_only) * 2 // 3])
    await chat.control(Control.END_TURN)
    await chat.receive_reply(timeout=10)
    await chat.send_pages(encode_browser_pages(np.zeros(WIRE_SAMPLE_RATE, np.float32)))
    assert (await chat.receive_for(1.5)).texts == [] and len(engine.requests) == 2
