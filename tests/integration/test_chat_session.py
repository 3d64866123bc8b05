"""/api/chat driven through the real app with a fake engine and real Opus."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import numpy as np

from tests.fakes import FakeEngine
from tests.helpers import tone_pages
from web_demo.server.protocol import Control

PAGES_1S = tone_pages(1.0)


async def test_full_turn_streams_status_text_audio_final(chat_server) -> None:
    engine = FakeEngine(audio_s=1.0)
    _, connect = await chat_server(engine)
    chat = await connect()
    await chat.turn(PAGES_1S)
    reply = await chat.receive_reply()
    assert reply.texts[0] == "[Processing...]"
    assert reply.texts[1:3] == ["Hello ", "there."]
    assert reply.final == "\n[Final: Hello there.]"
    assert reply.errors == []
    # 1 s of audio in, the engine returned 1 s of audio: all of it arrives, decodable.
    assert abs(len(reply.pcm_24k) - 24000) <= 2 * 960
    assert np.abs(reply.pcm_24k[4800:19200]).mean() > 0.05
    (request,) = engine.requests
    assert abs(len(request.user_audio_16k) - 16000) <= 640  # 16 kHz for models
    (conversation,) = engine.conversations.values()
    assert conversation.committed == ["Hello there."]  # the whole reply reached the client


async def test_records_from_handshake_without_start(chat_server) -> None:
    engine = FakeEngine(audio_s=0.2)
    _, connect = await chat_server(engine)
    chat = await connect()
    await chat.send_pages(PAGES_1S)
    await chat.control(Control.PAUSE)
    await chat.receive_reply()
    assert len(engine.requests[0].user_audio_16k) > 15000


async def test_json_control_frames_drive_a_turn(chat_server) -> None:
    engine = FakeEngine(audio_s=0.2)
    _, connect = await chat_server(engine)
    chat = await connect()
    await chat.ws.send_str(json.dumps({"type": "control", "action": "start"}))
    await chat.send_pages(PAGES_1S)
    await chat.ws.send_str(json.dumps({"type": "control", "action": "endTurn"}))
    reply = await chat.receive_reply()
    assert reply.final is not None


async def test_malformed_frames_get_error_frames_and_session_survives(chat_server) -> None:
    engine = FakeEngine(audio_s=0.2)
    _, connect = await chat_server(engine)
    chat = await connect()
    bad = [b"\x09", b"\x01not-ogg", b"\x03", b"\x03\x09", b"\x04{", b"\x04\xff", b"\x05x"]
    for frame in bad:
        await chat.ws.send_bytes(frame)
    await chat.ws.send_str("not json")
    await chat.ws.send_str(json.dumps({"type": "control", "action": "fly"}))
    got = await chat.receive_for(0.5)
    assert len(got.errors) == len(bad) + 2
    assert all(e.startswith("bad frame:") for e in got.errors)
    await chat.turn(PAGES_1S)  # still serving
    assert (await chat.receive_reply()).final is not None


async def test_empty_binary_frame_is_an_error(chat_server) -> None:
    _, connect = await chat_server()
    chat = await connect()
    await chat.ws.send_bytes(b"")
    assert (await chat.receive_for(0.3)).errors == ["bad frame: empty frame"]


async def test_oversized_frame_closes_with_1009_and_others_unaffected(chat_server) -> None:
    engine = FakeEngine(audio_s=0.2)
    _, connect = await chat_server(engine, max_frame_bytes=4096)
    victim, bystander = await connect(), await connect()
    await victim.ws.send_bytes(b"\x01OggS" + bytes(8192))
    msg = await victim.ws.receive(timeout=5)
    while msg.type is aiohttp.WSMsgType.BINARY:
        msg = await victim.ws.receive(timeout=5)
    assert victim.ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    await bystander.turn(PAGES_1S)
    assert (await bystander.receive_reply()).final is not None


async def test_turn_longer_than_limit_is_truncated_with_error(chat_server) -> None:
    engine = FakeEngine(audio_s=0.2)
    _, connect = await chat_server(engine, max_turn_s=0.5)
    chat = await connect()
    await chat.turn(PAGES_1S)
    reply = await chat.receive_reply()
    assert len(reply.errors) == 1 and "longer than 0.5 s" in reply.errors[0]
    assert len(engine.requests[0].user_audio_16k) == 8000


async def test_garbage_ogg_after_valid_stream_is_rejected(chat_server) -> None:
    _, connect = await chat_server()
    chat = await connect()
    await chat.send_pages(PAGES_1S[:4])
    await chat.ws.send_bytes(b"\x01" + b"\x00" * 100)
    assert len((await chat.receive_for(0.3)).errors) == 1


async def test_system_prompt_applies_from_next_turn(chat_server) -> None:
    engine = FakeEngine(audio_s=0.2)
    _, connect = await chat_server(engine)
    chat = await connect()
    await chat.turn(PAGES_1S)
    await chat.receive_reply()
    await chat.ws.send_bytes(b"\x04" + json.dumps({"system_prompt": "Speak like a pirate."}).encode())
    await chat.turn(PAGES_1S)
    await chat.receive_reply()
    assert engine.requests[0].system_prompt != "Speak like a pirate."
    assert engine.requests[1].system_prompt == "Speak like a pirate."


async def test_history_accumulates_caps_and_restart_clears(chat_server) -> None:
    engine = FakeEngine(audio_s=0.2)
    _, connect = await chat_server(engine, history_turns=2)
    chat = await connect()
    for _ in range(4):
        await chat.turn(PAGES_1S)
        await chat.receive_reply()
    (conversation,) = engine.conversations.values()
    assert conversation.history_turns == 2  # the engine's conversation applies the cap
    assert conversation.committed == ["Hello there."] * 4
    await chat.control(Control.RESTART)
    await chat.turn(PAGES_1S)
    await chat.receive_reply()
    assert conversation.resets == 1 and conversation.committed == ["Hello there."]
    assert [r.turn_index for r in engine.requests] == [0, 1, 2, 3, 4]


async def test_barge_in_cancels_within_100ms_and_keeps_new_speech(chat_server) -> None:
    # A slow engine: 10 s of reply produced at 5 steps per second.
    engine = FakeEngine(audio_s=10.0, step_delay_s=0.2)
    _, connect = await chat_server(engine)
    chat = await connect()
    await chat.turn(PAGES_1S)
    first = await chat.receive_for(1.0)
    assert first.audio_pages, "the reply should be streaming"
    loop = asyncio.get_running_loop()
    sent_start_at = loop.time()
    await chat.control(Control.START)
    await chat.send_pages(tone_pages(0.6, freq=880))  # the user talks over the reply
    await asyncio.sleep(0.1)
    assert engine.stopped_at and engine.stopped_at[0] - sent_start_at < 0.1
    late = await chat.receive_for(0.5)
    assert late.audio_pages == [] and late.final is None
    await chat.control(Control.END_TURN)
    reply = await chat.receive_reply()
    assert reply.final is not None
    second = engine.requests[1]
    assert abs(len(second.user_audio_16k) - 0.6 * 16000) <= 640  # all the new speech
    (conversation,) = engine.conversations.values()
    assert conversation.committed[0] == "Hello there."  # what was sent before barge-in


async def test_pings_during_silence(chat_server) -> None:
    _, connect = await chat_server(ping_interval_s=0.1)
    chat = await connect()
    got = await chat.receive_for(0.55)
    assert 3 <= got.pings <= 6


async def test_max_sessions_refuses_with_1013_and_admitted_unaffected(chat_server) -> None:
    engine = FakeEngine(audio_s=0.2)
    client, connect = await chat_server(engine, max_sessions=2)
    first, second = await connect(), await connect()
    refused = await client.ws_connect("/api/chat")
    msg = await refused.receive(timeout=5)
    assert msg.data[0] == 0x05 and b"server full" in msg.data
    msg = await refused.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1013
    for chat in (first, second):
        await chat.turn(PAGES_1S)
        assert (await chat.receive_reply()).final is not None
    health = await (await client.get("/health")).json()
    assert health["sessions"] == {"active": 2, "max": 2}


async def test_permessage_deflate_that_browsers_offer_is_declined(chat_server) -> None:
    _, connect = await chat_server(FakeEngine(audio_s=0.2))
    chat = await connect(compress=15)
    assert chat.ws.compress == 0  # Opus frames go out as they are, not deflated per frame
    await chat.turn(PAGES_1S)
    assert (await chat.receive_reply()).final is not None


async def test_concurrent_sessions_each_get_only_their_reply(chat_server) -> None:
    from web_demo.server.engines.base import TextDelta

    def tag(request):  # the reply text names the turn's audio length
        return [TextDelta(f"len={len(request.user_audio_16k)}")]

    engine = FakeEngine(audio_s=0.6, step_delay_s=0.05, text_pieces=(), first_events=tag)
    _, connect = await chat_server(engine)
    clients = [await connect() for _ in range(8)]

    async def one(i: int, chat) -> tuple[int, str]:
        await chat.turn(tone_pages(0.2 + 0.1 * i))
        reply = await chat.receive_reply()
        assert reply.errors == []
        assert abs(len(reply.pcm_24k) - 0.6 * 24000) <= 2 * 960
        return i, reply.texts[1]

    results = await asyncio.gather(*(one(i, c) for i, c in enumerate(clients)))
    lengths = [int(text.split("=")[1]) for _, text in sorted(results)]
    expected = [round((0.2 + 0.1 * i) * 16000) for i in range(8)]
    assert all(abs(a - b) <= 640 for a, b in zip(lengths, expected)), (lengths, expected)


async def test_extras_opt_in_sends_transcript_and_latency(chat_server) -> None:
    engine = FakeEngine(audio_s=0.4)
    _, connect = await chat_server(engine)
    plain, extra = await connect(), await connect("?extras=1")
    for chat in (plain, extra):
        await chat.turn(PAGES_1S)
    assert (await plain.receive_reply()).metadata == []
    reply = await extra.receive_reply()
    await asyncio.sleep(0.05)
    reply.metadata += (await extra.receive_for(0.2)).metadata
    kinds = {m["type"]: m for m in reply.metadata}
    assert kinds["transcript"]["text"].startswith("heard")
    assert kinds["latency"]["first_audio_ms"] >= 0


async def test_engine_error_becomes_error_frame_and_next_turn_works(chat_server) -> None:
    from web_demo.server.errors import WorkerDied
    engine = FakeEngine(audio_s=0.2, fail_with=WorkerDied("tts worker died"))
    _, connect = await chat_server(engine)
    chat = await connect()
    await chat.turn(PAGES_1S)
    reply = await chat.receive_reply()
    assert reply.errors and "tts worker died" in reply.errors[0] and "retry" in reply.errors[0]
    engine.fail_with = None
    await chat.turn(PAGES_1S)
    reply = await chat.receive_reply()
    assert reply.errors == [] and reply.final == "\n[Final: Hello there.]"


async def test_save_audio_writes_input_and_reply_wavs(chat_server, tmp_path) -> None:
    import soundfile as sf
    engine = FakeEngine(audio_s=0.4)
    _, connect = await chat_server(engine, save_audio=True, output_dir=tmp_path)
    chat = await connect()
    await chat.turn(PAGES_1S)
    await chat.receive_reply()
    await asyncio.sleep(0.1)
    inputs, replies = sorted(tmp_path.glob("*_input.wav")), sorted(tmp_path.glob("*_reply.wav"))
    assert len(inputs) == 1 and len(replies) == 1
    assert sf.info(inputs[0]).samplerate == 16000 and sf.info(replies[0]).samplerate == 24000
    assert abs(sf.info(replies[0]).frames - 0.4 * 24000) <= 960
    assert not list(tmp_path.glob("*.tmp"))


async def test_health_and_index(chat_server) -> None:
    client, _ = await chat_server()
    health = await (await client.get("/health")).json()
    assert health["engine"] == "fake" and health["status"] == "healthy"
    assert (await client.get("/")).status == 200


async def test_session_end_releases_engine_state(chat_server) -> None:
    engine = FakeEngine()
    _, connect = await chat_server(engine)
    chat = await connect()
    await chat.ws.close()
    await asyncio.sleep(0.1)
    (conversation,) = engine.conversations.values()
    assert conversation.closed


async def test_api_key_required_when_configured(chat_server) -> None:
    client, connect = await chat_server(api_key="s3cret")
    response = await client.get("/api/chat")
    assert response.status == 401 and (await response.json())["error"]["code"] == 401
    assert (await client.get("/api/chat?api_key=wrong")).status == 401
    chat = await connect("?api_key=s3cret")  # browsers: query parameter
    await chat.ws.close()
    ws = await client.ws_connect("/api/chat", headers={"Authorization": "Bearer s3cret"})
    assert (await ws.receive(timeout=5)).data == b"\x00\x00\x00"
    await ws.close()
    assert (await client.get("/health")).status == 200  # health stays open


async def test_queue_position_is_an_opt_in_extra(chat_server) -> None:
    from web_demo.server.engines.base import QueuePosition

    _, connect = await chat_server(FakeEngine(audio_s=0.2, first_events=lambda r: [QueuePosition(3)]))
    plain, extra = await connect(), await connect("?extras=1")
    for chat in (plain, extra):
        await chat.turn(PAGES_1S)
    assert (await plain.receive_reply()).metadata == []
    reply = await extra.receive_reply()
    assert {"type": "queue", "position": 3} in reply.metadata


async def test_mic_pages_decoded_out_of_order_reach_the_turn_in_order(chat_server, monkeypatch) -> None:
    """The wire reads on while pages are being decoded (several in flight at once); a slow
    codec's answers, here in reverse order, are fed in the order the pages came, and endTurn
    waits for all of them."""
    from utils.opus import OpusStreamDecoder
    from web_demo.server.opus_codec import MIC_SAMPLE_RATE, InlineCodec

    decode_inline = InlineCodec.decode
    in_flight: list[int] = [0, 0]  # now, most

    def late_decode(self, ogg: bytes) -> asyncio.Future[np.ndarray]:
        pcm = decode_inline(self, ogg).result()
        answer = asyncio.get_running_loop().create_future()
        in_flight[0] += 1
        in_flight[1] = max(in_flight)
        answer.add_done_callback(lambda _: in_flight.__setitem__(0, in_flight[0] - 1))
        # each page is answered 5 ms sooner than the one before it
        asyncio.get_running_loop().call_later(0.2 - 0.005 * min(in_flight[0], 39), answer.set_result, pcm)
        return answer

    monkeypatch.setattr(InlineCodec, "decode", late_decode)
    engine = FakeEngine(audio_s=0.2)
    _, connect = await chat_server(engine, opus_codec="inline")
    chat = await connect()
    await chat.turn(PAGES_1S)
    assert (await chat.receive_reply()).final is not None
    decoder = OpusStreamDecoder(MIC_SAMPLE_RATE)
    want = np.concatenate([decoder.decode(page) for page in PAGES_1S])
    (request,) = engine.requests
    np.testing.assert_array_equal(request.user_audio_16k, want)
    assert in_flight[1] > 5
