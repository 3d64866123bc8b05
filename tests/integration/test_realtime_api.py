"""/v1/realtime with the real `openai` SDK's realtime client against the real app.

The app runs in-process on a real port (aiohttp's test server) with FakeEngine, which
records every ReplyRequest and answers "Hello there." with a 330 Hz tone; the server VAD is
the real silero-vad hearing real speech (tests/fixtures/speech).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from tests.fakes import FakeEngine, wait_until
from tests.helpers import speech_24k
from tests.realtime_helpers import (
    AUDIO_DELTAS,
    MANUAL_TURNS,
    TEXT_DELTAS,
    TRANSCRIPT_DELTAS,
    Events,
    append_audio,
    b64,
    collect,
    connect,
    is_done,
    is_type,
    peak_hz,
    quiet,
    rms,
    tone_24k,
    with_silence,
)
from utils.audio import MODEL_SAMPLE_RATE, WIRE_SAMPLE_RATE
from web_demo.server.realtime.audio_formats import AudioFormat, ulaw_decode
from web_demo.server.realtime.protocol import MAX_APPEND_B64_CHARS

HELLO = speech_24k("hello")  # ~2.2 s of speech
LEAD_S = 0.5
TONE_BYTES_PER_S = 2 * WIRE_SAMPLE_RATE  # PCM16 at 24 kHz


async def start(chat_server: Any, engine: FakeEngine | None = None, **options: Any) -> tuple[Any, FakeEngine]:
    engine = engine or FakeEngine(audio_s=0.6)
    client, _ = await chat_server(engine, **options)
    return client, engine


async def opened(conn: Any) -> Any:
    """The session.created every connection starts with."""
    return (await collect(conn, is_type("session.created"), timeout=5)).one("session.created")


async def manual_session(conn: Any, **session: Any) -> Any:
    await opened(conn)
    await conn.session.update(session={**MANUAL_TURNS, **session})
    return (await collect(conn, is_type("session.updated"), timeout=5)).one("session.updated").session


async def manual_turn(conn: Any, pcm_24k: np.ndarray, **response: Any) -> None:
    await append_audio(conn, pcm_24k, speed=20)
    await conn.input_audio_buffer.commit()
    await conn.response.create(**({"response": response} if response else {}))


def assert_one_completed_response(got: Any, transcript: str = "Hello there.") -> Any:
    """The event sequence of one answered turn; returns its response.done response."""
    types = got.types()
    created = got.one("response.created").response
    (done,) = got.done()
    assert done.id == created.id and done.status == "completed" and done.status_details is None
    order = [types.index("input_audio_buffer.committed"), types.index("conversation.item.added"),
             types.index("response.created"), types.index("response.output_item.added"),
             types.index("response.content_part.added"), types.index(TRANSCRIPT_DELTAS[0]),
             types.index(AUDIO_DELTAS[0]), types.index("response.output_audio.done"),
             types.index("response.output_audio_transcript.done"), types.index("response.content_part.done"),
             types.index("response.output_item.done"), types.index("response.done")]
    assert order == sorted(order), types
    assert all(e.response_id == created.id for e in got.of(*AUDIO_DELTAS, *TRANSCRIPT_DELTAS))
    assert got.transcript() == transcript
    assert got.one("response.output_audio_transcript.done").transcript == transcript
    (item,) = done.output
    assert item.role == "assistant" and item.status == "completed"
    assert item.content[0].transcript == transcript
    user_item = got.of("conversation.item.added")[0].item
    assert user_item.role == "user" and user_item.id == got.one("input_audio_buffer.committed").item_id
    return done


def assert_tone(pcm: np.ndarray, rate: int, seconds: float) -> None:
    """FakeEngine's reply: `seconds` of a 330 Hz tone at 0.3 (so not silence)."""
    assert abs(len(pcm) - seconds * rate) <= 0.01 * rate, len(pcm)
    assert 0.15 < rms(pcm) < 0.25
    assert abs(peak_hz(pcm, rate) - 330) < 10


# ---- turns ----------------------------------------------------------------------------------

async def test_a_voice_turn_with_server_vad(chat_server: Any) -> None:
    client, engine = await start(chat_server)
    async with connect(client.server.port) as conn:
        session = (await opened(conn)).session
        assert session.type == "realtime" and session.audio.input.turn_detection.type == "server_vad"
        await append_audio(conn, with_silence(HELLO, lead_s=LEAD_S, tail_s=1.2))  # and no commit
        got = await collect(conn, is_done(), timeout=20)
        types = got.types()
        started = got.one("input_audio_buffer.speech_started")
        stopped = got.one("input_audio_buffer.speech_stopped")
        committed = got.one("input_audio_buffer.committed")
        assert types.index(started.type) < types.index(stopped.type) < types.index(committed.type)
        assert started.item_id == stopped.item_id == committed.item_id
        assert LEAD_S * 1000 + 100 < started.audio_start_ms < LEAD_S * 1000 + 500
        assert started.audio_start_ms + 1500 < stopped.audio_end_ms < (LEAD_S + 2.6) * 1000
        assert_one_completed_response(got)
        assert_tone(got.pcm16(), WIRE_SAMPLE_RATE, 0.6)
        heard = got.one("conversation.item.input_audio_transcription.completed")
        (request,) = engine.requests
        assert heard.item_id == committed.item_id
        assert heard.transcript == f"heard {len(request.user_audio_16k)} samples"
        # the turn is the speech, from its pre-roll to the silence that ended it
        heard_s = len(request.user_audio_16k) / MODEL_SAMPLE_RATE
        expected_s = (stopped.audio_end_ms + 500 - (started.audio_start_ms - 300)) / 1000
        assert abs(heard_s - expected_s) < 0.25, (heard_s, expected_s)
        assert request.user_text is None
        assert (await quiet(conn, 0.5)).of("response.created") == []  # one turn, one response


async def test_a_manual_commit_turn(chat_server: Any) -> None:
    client, engine = await start(chat_server)
    async with connect(client.server.port) as conn:
        session = await manual_session(conn)
        assert session.audio.input.turn_detection is None
        await append_audio(conn, HELLO, speed=20)
        assert (await quiet(conn, 0.5)).types() == []  # no VAD: nothing happens until the commit
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        got = await collect(conn, is_done(), timeout=20)
        assert "input_audio_buffer.speech_started" not in got.types()
        assert_one_completed_response(got)
        assert_tone(got.pcm16(), WIRE_SAMPLE_RATE, 0.6)
        (request,) = engine.requests
        assert abs(len(request.user_audio_16k) - len(HELLO) * 2 / 3) <= 16
        # a second turn on the same connection: the buffer filled again after the commit
        await manual_turn(conn, tone_24k(0.5))
        second = await collect(conn, is_done(), timeout=20)
        assert_one_completed_response(second)
        assert abs(len(engine.requests[1].user_audio_16k) - 0.5 * MODEL_SAMPLE_RATE) <= 16


async def test_response_cancel_stops_the_response_and_no_audio_of_it_follows(chat_server: Any) -> None:
    client, engine = await start(chat_server, FakeEngine(audio_s=8.0))
    async with connect(client.server.port) as conn:
        await manual_session(conn)
        await manual_turn(conn, tone_24k(0.5))
        playing = await collect(conn, is_type(*AUDIO_DELTAS), timeout=10)
        response_id = playing.one("response.created").response.id
        await conn.response.cancel()
        rest = await collect(conn, is_done(), timeout=5)
        (done,) = rest.done()
        assert done.id == response_id and done.status == "cancelled"
        assert done.status_details.type == "cancelled" and done.status_details.reason == "client_cancelled"
        assert done.output[0].status == "incomplete"
        await wait_until(lambda: len(engine.stopped_at) == 1, timeout=5)  # the engine let go of it
        after = await quiet(conn, 1.0)
        assert after.of(*AUDIO_DELTAS, *TRANSCRIPT_DELTAS) == [], after.types()
        sent_s = len((playing + rest).audio(response_id)) / TONE_BYTES_PER_S
        assert sent_s < 3.0  # 8 s were coming
        # what reached the client is what the conversation keeps
        (conversation,) = engine.conversations.values()
        assert conversation.committed == ["Hello there."]
        await conn.response.cancel()  # nothing left to cancel
        (error,) = (await collect(conn, is_type("error"), timeout=5)).errors()
        assert error.code == "invalid_value" and error.param == "response_id"


async def test_speech_during_a_response_cancels_it_and_the_new_turn_is_answered(chat_server: Any) -> None:
    engine = FakeEngine(audio_s=8.0, text_pieces=("first",))
    client, _ = await start(chat_server, engine)
    async with connect(client.server.port) as conn:
        await opened(conn)
        await append_audio(conn, with_silence(HELLO, lead_s=LEAD_S, tail_s=1.2))
        first = await collect(conn, is_type(*AUDIO_DELTAS), timeout=20)  # the first answer is playing
        first_id = first.one("response.created").response.id
        engine.audio_s, engine.text_pieces = 0.4, ("second",)
        await append_audio(conn, with_silence(HELLO, lead_s=0.3, tail_s=1.2))  # the user talks over it
        rest = await collect(conn, lambda e: is_done()(e) and e.response.id != first_id, timeout=20)
        types = rest.types()
        cut = next(i for i, e in enumerate(rest) if e.type == "response.done" and e.response.id == first_id)
        assert rest.items[cut].response.status == "cancelled"
        assert rest.items[cut].response.status_details.reason == "turn_detected"
        assert types.index("input_audio_buffer.speech_started") < cut  # speech cut it at once
        later = Events(rest.items[cut + 1:])
        assert [e for e in later.of(*AUDIO_DELTAS, *TRANSCRIPT_DELTAS) if e.response_id == first_id] == []
        # the new turn gets its own response
        second = later.one("response.created").response
        assert second.id != first_id
        assert later.index("input_audio_buffer.committed") < later.index("response.created")
        assert later.transcript(second.id) == "second" and later.done()[-1].status == "completed"
        assert len(engine.requests) == 2 and len(engine.stopped_at) == 1
        (conversation,) = engine.conversations.values()
        assert conversation.committed == ["first", "second"]


async def test_with_interrupt_response_off_speech_lets_the_response_finish(chat_server: Any) -> None:
    engine = FakeEngine(audio_s=3.0, text_pieces=("first",), step_delay_s=0.05)
    client, _ = await start(chat_server, engine)
    async with connect(client.server.port) as conn:
        await opened(conn)
        await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": {
            "type": "server_vad", "interrupt_response": False, "create_response": False}}}})
        await append_audio(conn, with_silence(HELLO, lead_s=LEAD_S, tail_s=1.2))
        await collect(conn, is_type("input_audio_buffer.committed"), timeout=20)
        await conn.response.create()
        await collect(conn, is_type(*AUDIO_DELTAS), timeout=10)  # the answer is playing
        await append_audio(conn, with_silence(HELLO, lead_s=0.3, tail_s=1.2))  # the user talks over it
        rest = await collect(conn, is_done(), timeout=20)
    assert "input_audio_buffer.speech_started" in rest.types()
    assert rest.done()[0].status == "completed" and engine.stopped_at == []


async def test_a_cancel_right_after_response_create_cancels_it(chat_server: Any) -> None:
    client, _ = await start(chat_server, FakeEngine(audio_s=8.0))
    async with connect(client.server.port) as conn:
        await manual_session(conn)
        await append_audio(conn, tone_24k(0.5), speed=20)
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        await conn.response.cancel()  # before response.created can have reached the client
        got = await collect(conn, is_done(), timeout=10)
    assert got.errors() == [] and got.done()[0].status == "cancelled"
    assert len(got.audio()) < 2 * TONE_BYTES_PER_S


async def test_the_beta_header_gets_a_beta_session_created(chat_server: Any) -> None:
    client, _ = await start(chat_server)
    ws = await client.ws_connect("/v1/realtime?model=m", headers={"OpenAI-Beta": "realtime=v1"})
    created = json.loads((await ws.receive(timeout=5)).data)
    assert created["type"] == "session.created"
    assert "modalities" in created["session"] and "input_audio_format" in created["session"]
    plain = await client.ws_connect("/v1/realtime?model=m")
    assert "output_modalities" in json.loads((await plain.receive(timeout=5)).data)["session"]


async def test_permessage_deflate_is_declined(chat_server: Any) -> None:
    client, _ = await start(chat_server)
    ws = await client.ws_connect("/v1/realtime?model=m", compress=15)
    assert ws.compress == 0
    assert json.loads((await ws.receive(timeout=5)).data)["type"] == "session.created"


async def test_a_text_only_response(chat_server: Any) -> None:
    client, _ = await start(chat_server, FakeEngine(audio_s=0.4))
    async with connect(client.server.port) as conn:
        session = await manual_session(conn, output_modalities=["text"])
        assert session.output_modalities == ["text"]
        await manual_turn(conn, tone_24k(0.5))
        got = await collect(conn, is_done(), timeout=10)
        assert got.of(*AUDIO_DELTAS, *TRANSCRIPT_DELTAS) == []
        assert [e.delta for e in got.of(TEXT_DELTAS[0])] == ["Hello ", "there."]
        assert got.one("response.output_text.done").text == "Hello there."
        (done,) = got.done()
        assert done.status == "completed" and done.output_modalities == ["text"]
        assert done.output[0].content[0].type == "output_text"
        assert done.output[0].content[0].text == "Hello there."
        # a response.create may ask for audio again, for that response only
        await manual_turn(conn, tone_24k(0.5), output_modalities=["audio"])
        audio = await collect(conn, is_done(), timeout=10)
        assert audio.text() == "" and audio.transcript() == "Hello there."
        assert len(audio.audio()) == 0.4 * TONE_BYTES_PER_S


async def test_an_instructions_change_reaches_the_engine(chat_server: Any) -> None:
    client, engine = await start(chat_server, FakeEngine(audio_s=0.2))
    async with connect(client.server.port) as conn:
        await opened(conn)
        await conn.session.update(session={"type": "realtime", "instructions": "Speak like a pirate."})
        updated = (await collect(conn, is_type("session.updated"), timeout=5)).one("session.updated")
        assert updated.session.instructions == "Speak like a pirate."
        await say(conn, "Hi")
        await conn.response.create()
        await collect(conn, is_done("completed"), timeout=10)
        await say(conn, "Hi again")
        await conn.response.create(response={"instructions": "Be brief."})  # this response only
        await collect(conn, is_done("completed"), timeout=10)
        await say(conn, "And again")
        await conn.response.create()
        await collect(conn, is_done("completed"), timeout=10)
        prompts = [r.system_prompt for r in engine.requests]
        assert prompts == ["Speak like a pirate.", "Be brief.", "Speak like a pirate."]


async def test_the_clients_temperature_reaches_the_engine_once_it_sets_one(chat_server: Any) -> None:
    client, engine = await start(chat_server, FakeEngine(audio_s=0.2))
    async with connect(client.server.port) as conn:
        await opened(conn)
        for session, response in [(None, None), ({"temperature": 0.6}, None), (None, {"temperature": 1.2}),
                                  (None, None)]:
            await typed_turn(conn, session, response)
    sampling = [r.sampling for r in engine.requests]
    assert sampling[0] is None  # not set: the engine's own
    assert [s.text_temperature for s in sampling[1:]] == [0.6, 1.2, 0.6]  # the response's for it only


async def test_the_clients_voice_reaches_the_engine_once_it_sets_one(chat_server: Any) -> None:
    def output_voice(voice: str | None) -> dict[str, Any] | None:
        return None if voice is None else {"audio": {"output": {"voice": voice}}}

    client, engine = await start(chat_server, FakeEngine(audio_s=0.2))
    async with connect(client.server.port) as conn:
        await opened(conn)
        for session, response, reported in [(None, None, "default"), ("coral", None, "coral"),
                                            (None, "ash", "ash"), (None, None, "coral")]:
            got = await typed_turn(conn, output_voice(session), output_voice(response))
            assert got.one("response.created").response.audio.output.voice == reported
    # not set: the engine's own; a response's voice for that response only
    assert [r.voice for r in engine.requests] == [None, "coral", "ash", "coral"]


async def test_the_sessions_speed_changes_the_rate_not_the_pitch(chat_server: Any) -> None:
    client, _ = await start(chat_server, FakeEngine(audio_s=1.2))
    async with connect(client.server.port) as conn:
        await manual_session(conn)
        for speed in (1.5, 0.5):
            await conn.session.update(session={"type": "realtime", "audio": {"output": {"speed": speed}}})
            assert (await collect(conn, is_type("session.updated"), timeout=5)).one(
                "session.updated").session.audio.output.speed == speed
            await manual_turn(conn, tone_24k(0.5))
            got = await collect(conn, is_done("completed"), timeout=10)
            pcm = got.pcm16()
            assert abs(len(pcm) / WIRE_SAMPLE_RATE - 1.2 / speed) < 0.05, (speed, len(pcm))
            assert abs(peak_hz(pcm, WIRE_SAMPLE_RATE) - 330) < 10  # the engine's tone, stretched


async def test_the_clients_max_output_tokens_caps_the_reply(chat_server: Any) -> None:
    client, engine = await start(chat_server, FakeEngine(audio_s=0.2))
    async with connect(client.server.port) as conn:
        await opened(conn)
        for session, response in [(None, None), (50, None), (None, 10), (None, None), ("inf", None)]:
            await typed_turn(conn, None if session is None else {"max_output_tokens": session},
                             None if response is None else {"max_output_tokens": response})
    caps = [r.sampling.max_text_tokens if r.sampling is not None else None for r in engine.requests]
    assert caps == [None, 50, 10, 50, None]  # "inf" lifts it: the engine's own again


async def say(conn: Any, text: str) -> Any:
    """A typed user message; returns its conversation.item.added item."""
    await conn.conversation.item.create(item={"type": "message", "role": "user",
                                              "content": [{"type": "input_text", "text": text}]})
    return (await collect(conn, is_type("conversation.item.added"), timeout=5)).one(
        "conversation.item.added").item


async def typed_turn(conn: Any, session: dict[str, Any] | None = None,
                     response: dict[str, Any] | None = None) -> Any:
    """One typed turn answered, after a session.update of `session`'s fields if given;
    `response`: the turn's own response.create fields. Returns the turn's events."""
    if session is not None:
        await conn.session.update(session={"type": "realtime", **session})
        await collect(conn, is_type("session.updated"), timeout=5)
    await say(conn, "Hi")
    await conn.response.create(**({"response": response} if response else {}))
    return await collect(conn, is_done("completed"), timeout=10)


async def test_a_typed_user_message_is_answered(chat_server: Any) -> None:
    client, engine = await start(chat_server)
    async with connect(client.server.port) as conn:
        await opened(conn)
        item = await say(conn, "What is the weather in Paris?")
        assert item.role == "user" and item.content[0].type == "input_text"
        assert item.content[0].text == "What is the weather in Paris?"
        await conn.response.create()
        got = await collect(conn, is_done(), timeout=10)
        assert got.done()[0].status == "completed" and got.transcript() == "Hello there."
        assert_tone(got.pcm16(), WIRE_SAMPLE_RATE, 0.6)
        (request,) = engine.requests
        assert request.user_text == "What is the weather in Paris?" and len(request.user_audio_16k) == 0


async def test_g711_ulaw_in_and_out(chat_server: Any) -> None:
    client, engine = await start(chat_server, FakeEngine(audio_s=1.0))
    async with connect(client.server.port) as conn:
        session = await manual_session(conn, audio={
            "input": {"format": {"type": "audio/pcmu"}, "turn_detection": None},
            "output": {"format": {"type": "audio/pcmu"}}})
        assert session.audio.input.format.type == "audio/pcmu"
        assert session.audio.output.format.type == "audio/pcmu"
        t = np.arange(int(1.5 * 8000)) / 8000
        await append_audio(conn, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
                           fmt=AudioFormat.G711_ULAW, speed=20)
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        got = await collect(conn, is_done("completed"), timeout=10)
        (request,) = engine.requests
        heard = request.user_audio_16k
        assert abs(len(heard) - 1.5 * MODEL_SAMPLE_RATE) <= 32, len(heard)  # its last ms too
        assert abs(peak_hz(heard, MODEL_SAMPLE_RATE) - 440) < 10  # the tone, not noise
        ulaw = got.audio()
        assert abs(len(ulaw) - 8000) <= 16, len(ulaw)  # 1 s at 8 kHz, one byte a sample
        reply = ulaw_decode(np.frombuffer(ulaw, np.uint8)).astype(np.float32) / 32768
        assert 0.15 < rms(reply[400:]) < 0.25 and abs(peak_hz(reply, 8000) - 330) < 10


async def test_the_beta_dialect_gets_beta_event_names(chat_server: Any) -> None:
    client, engine = await start(chat_server)
    async with connect(client.server.port, beta=True) as conn:
        await opened(conn)
        await conn.session.update(session={"input_audio_format": "pcm16", "turn_detection": None,
                                           "modalities": ["text", "audio"]})
        session = (await collect(conn, is_type("session.updated"), timeout=5)).one("session.updated").session
        assert session.modalities == ["text", "audio"] and session.input_audio_format == "pcm16"
        assert session.turn_detection is None
        await manual_turn(conn, tone_24k(0.5))
        got = await collect(conn, is_done(), timeout=10)
        types = set(got.types())
        assert {"conversation.item.created", "response.audio.delta", "response.audio_transcript.delta",
                "response.audio.done", "response.audio_transcript.done"} <= types
        assert not types & {"conversation.item.added", "conversation.item.done",
                            "response.output_audio.delta", "response.output_audio_transcript.delta"}
        assert got.transcript() == "Hello there." and len(got.audio()) == 0.6 * TONE_BYTES_PER_S
        (done,) = got.done()
        assert done.status == "completed" and done.modalities == ["text", "audio"]
        assert done.output[0].content[0].type == "audio"
        assert len(engine.requests) == 1


# ---- refusals -------------------------------------------------------------------------------

async def test_malformed_events_get_an_error_event_and_the_socket_stays_up(chat_server: Any) -> None:
    # frames up to the 15 MiB append limit (and more) must reach the decoder
    client, engine = await start(chat_server, max_frame_bytes=MAX_APPEND_B64_CHARS + 1024 * 1024)
    async with connect(client.server.port) as conn:
        await opened(conn)

        async def refused(send: Any) -> Any:
            await send
            (error,) = (await collect(conn, is_type("error"), timeout=10)).errors()
            return error

        unknown = await refused(conn.send_raw(json.dumps({"type": "response.dance", "event_id": "e1"})))
        assert (unknown.code, unknown.param, unknown.event_id) == ("unknown_event", "type", "e1")
        bad_b64 = await refused(conn.input_audio_buffer.append(audio="not base64!", event_id="e2"))
        assert (bad_b64.code, bad_b64.event_id) == ("invalid_base64", "e2")
        odd = await refused(conn.input_audio_buffer.append(audio=b64(b"\x00\x01\x02")))
        assert odd.code == "invalid_value"  # PCM16 needs whole samples
        rate = await refused(conn.session.update(session={
            "type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}))
        assert (rate.code, rate.param) == ("unsupported_audio_format", "session.audio.input.format.rate")
        codec = await refused(conn.send_raw(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "audio": {"input": {"format": {"type": "audio/opus"}}}}})))
        assert codec.code == "unsupported_audio_format"
        oversize = await refused(conn.input_audio_buffer.append(audio="A" * (MAX_APPEND_B64_CHARS + 4)))
        assert oversize.code == "append_too_large"
        binary = await refused(conn.send_raw(b"\x00\x01binary"))
        assert binary.code == "invalid_json"
        not_json = await refused(conn.send_raw("{not json"))
        assert not_json.code == "invalid_json"
        nothing = await refused(conn.response.create())
        assert nothing.code == "invalid_value"  # nothing to answer
        no_response = await refused(conn.response.cancel())
        assert no_response.code == "invalid_value"
        empty = await refused(conn.input_audio_buffer.commit())
        assert empty.code == "invalid_value"  # under 100 ms in the buffer
        assistant = await refused(conn.conversation.item.create(item={
            "type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hi"}]}))
        assert assistant.code == "unsupported_value"
        # still up, and the rejected audio never reached the turn
        assert engine.requests == []
        await conn.session.update(session=MANUAL_TURNS)
        await collect(conn, is_type("session.updated"), timeout=5)
        await manual_turn(conn, tone_24k(0.5))
        got = await collect(conn, is_done(), timeout=10)
        assert got.done()[0].status == "completed" and got.errors() == []
        (request,) = engine.requests
        assert abs(len(request.user_audio_16k) - 0.5 * MODEL_SAMPLE_RATE) <= 16


async def test_a_second_session_over_max_sessions_is_refused(chat_server: Any) -> None:
    client, _ = await start(chat_server, max_sessions=1)
    async with connect(client.server.port) as first:
        await opened(first)
        async with connect(client.server.port) as second:
            got = await collect(second, is_type("error"), timeout=5)
            (error,) = got.errors()
            assert error.code == "server_busy" and "server full" in error.message
            with pytest.raises(ConnectionClosedError) as closed:
                await second.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        # the admitted session is unaffected
        await first.conversation.item.create(item={"type": "message", "role": "user",
                                                   "content": [{"type": "input_text", "text": "hi"}]})
        await first.response.create()
        assert (await collect(first, is_done(), timeout=10)).done()[0].status == "completed"
    # once it has gone, there is room again
    await asyncio.sleep(0.2)
    async with connect(client.server.port) as third:
        await opened(third)


async def test_the_api_key_is_required(chat_server: Any) -> None:
    client, _ = await start(chat_server, api_key="sesame")
    async with connect(client.server.port, api_key="sesame") as conn:
        assert (await opened(conn)).session.type == "realtime"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(client.server.port, api_key="wrong"):
            pass
    assert refused.value.response.status_code == 401
