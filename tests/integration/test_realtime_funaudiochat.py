"""/v1/realtime through the funaudiochat engine on the tiny golden model and tiny CosyVoice3 (CPU),
driven by the real `openai` SDK.

The weights are random, so the audio is noise: these tests check the protocol and the token
flow (LLM steps -> text deltas and speech tokens -> vocoder -> audio deltas), cancellation
and what the engine's history keeps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.fakes import wait_until
from tests.helpers import speech_24k
from tests.integration.test_funaudiochat_engine import CV3, SAMPLES_PER_TOKEN, tiny_engine
from tests.realtime_helpers import (
    AUDIO_DELTAS,
    MANUAL_TURNS,
    TRANSCRIPT_DELTAS,
    Events,
    append_audio,
    collect,
    connect,
    is_done,
    is_type,
    quiet,
    rms,
    with_silence,
)
from utils.funaudiochat import SamplingParams

pytestmark = pytest.mark.slow
HELLO = speech_24k("hello")
TURN_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def speaker_npy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cv3") / "speaker.npy"
    np.save(path, load_file(str(CV3 / "cases" / "inputs.safetensors"))["embedding"])
    return path


async def opened(conn: Any, **session: Any) -> None:
    await collect(conn, is_type("session.created"), timeout=10)
    if session:
        await conn.session.update(session=session)
        await collect(conn, is_type("session.updated"), timeout=10)


def assert_streamed_reply(got: Events, engine: Any) -> Any:
    """One completed response whose audio is what the vocoder made of the model's speech
    tokens and whose transcript is the model's text; returns its response.done response."""
    (done,) = got.done()
    assert done.status == "completed", done
    assert got.errors() == []
    pcm = got.pcm16()
    assert len(got.of(*AUDIO_DELTAS)) > 0 and rms(pcm) > 0  # noise, but sound
    codes = engine.vocoder.codes_per_stream[-1]
    assert codes > 0 and len(pcm) == codes * SAMPLES_PER_TOKEN, (len(pcm), codes)
    assert len(got.of(*TRANSCRIPT_DELTAS)) > 0
    transcript = got.transcript()
    assert transcript and done.output[0].content[0].transcript == transcript
    return done


async def test_manual_and_server_vad_turns_stream_tokens_and_keep_history(
        chat_server: Any, speaker_npy: Path) -> None:
    engine = tiny_engine(speaker_npy, max_steps=12)
    client, _ = await chat_server(engine)
    async with connect(client.server.port) as conn:
        await opened(conn, **MANUAL_TURNS)
        await append_audio(conn, HELLO, speed=20)
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        first = await collect(conn, is_done(), timeout=TURN_TIMEOUT_S)
        assert_streamed_reply(first, engine)
        # server VAD from here: the silence after the speech ends the turn
        await conn.session.update(session={"type": "realtime", "audio": {"input": {
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}})
        await append_audio(conn, with_silence(HELLO, lead_s=0.5, tail_s=1.2), speed=6)
        second = await collect(conn, is_done(), timeout=TURN_TIMEOUT_S)
        assert second.in_order("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                         "input_audio_buffer.committed", "response.created"), second.types()
        assert_streamed_reply(second, engine)
        (conversation,) = engine.conversations.values()
        roles = [role for role, _ in conversation._state.history]
        assert roles == ["system", "user", "assistant", "user", "assistant"]
        assert conversation._state.history[2][1] == first.transcript()


async def test_cancel_stops_generation_and_history_keeps_what_was_sent(
        chat_server: Any, speaker_npy: Path) -> None:
    engine = tiny_engine(speaker_npy, max_steps=400)
    client, _ = await chat_server(engine)
    async with connect(client.server.port) as conn:
        await opened(conn, **MANUAL_TURNS)
        await append_audio(conn, HELLO, speed=20)
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        playing = await collect(conn, is_type(*AUDIO_DELTAS), timeout=TURN_TIMEOUT_S)
        response_id = playing.one("response.created").response.id
        await conn.response.cancel()
        rest = await collect(conn, is_done(), timeout=10)
        (done,) = rest.done()
        assert done.id == response_id and done.status == "cancelled"
        (conversation,) = engine.conversations.values()
        await wait_until(conversation._handle.done.is_set, timeout=5)  # the scheduler let go of it
        assert engine.scheduler.num_active == 0
        after = await quiet(conn, 1.0)
        assert after.of(*AUDIO_DELTAS, *TRANSCRIPT_DELTAS) == [], after.types()
        sent = (playing + rest).transcript(response_id)
        # a typed turn next, kept short; it is answered like a spoken one
        engine.sampling = SamplingParams(top_k=1, max_steps=8, seed=0)
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "What is the weather like today?"}]})
        await conn.response.create()
        typed = await collect(conn, is_done(), timeout=TURN_TIMEOUT_S)
        assert_streamed_reply(typed, engine)
        history = conversation._state.history
        assert [role for role, _ in history] == ["system", "user", "assistant", "user", "assistant"]
        assert history[2] == ("assistant", sent)  # only what reached the client before the cancel
        assert "What is the weather like today?" in str(history[3][1])
