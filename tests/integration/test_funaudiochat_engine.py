"""The whole S2S server on the tiny golden Fun-Audio-Chat model and tiny CosyVoice3, on CPU.

The weights are random, so the audio is noise: these tests check the protocol, the token
flow (LLM steps -> speech tokens -> vocoder -> Opus), barge-in, history and concurrency.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.helpers import speech_24k, tone_pages
from tests.integration.test_workers import FAST
from utils.funaudiochat import SamplingParams
from utils.opus import encode_browser_pages
from web_demo.server.engines.funaudiochat import FunAudioChatEngine
from web_demo.server.engines.local import WorkerVocoder
from web_demo.server.protocol import Control

pytestmark = pytest.mark.slow
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FAC, CV3 = FIXTURES / "funaudiochat", FIXTURES / "cosyvoice3"
SAMPLES_PER_TOKEN = 960  # 25 Hz speech tokens -> 24 kHz


@pytest.fixture(scope="module")
def speaker_npy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cv3") / "speaker.npy"
    np.save(path, load_file(str(CV3 / "cases" / "inputs.safetensors"))["embedding"])
    return path


def tiny_engine(speaker_npy: Path, max_steps: int) -> FunAudioChatEngine:
    vocoder = WorkerVocoder(cfg=replace(FAST, close_timeout_s=10), init_kwargs={
        "model_dir": str(CV3 / "tiny_model"), "device": "cpu", "speaker_embedding": str(speaker_npy)})
    return FunAudioChatEngine(
        model_path=FAC / "model", tokenizer_path=FAC / "tokenizers" / "substitute_text_tokenizer",
        device="cpu", vocoder=vocoder, history_turns=8,
        sampling=SamplingParams(top_k=1, max_steps=max_steps, seed=0))


async def test_turns_stream_tokens_through_the_vocoder_and_keep_history(chat_server, speaker_npy) -> None:
    engine = tiny_engine(speaker_npy, max_steps=12)
    client, connect = await chat_server(engine)
    chat = await connect()
    await chat.turn(encode_browser_pages(speech_24k("hello")))
    first = await chat.receive_reply(timeout=120)
    assert first.errors == [] and first.texts[0] == "[Processing...]"
    # 12 steps: <|audio_bos|> first, then one 5-token speech group per step (unless the
    # random model ends speech early) -> 0.2 s of audio per group.
    state = engine._conversations[next(iter(engine._conversations))].state
    groups = len(state.last_generated_ids) - 1
    assert 0 < groups <= 11
    # every speech token becomes 960 samples; Opus pads the tail to whole 40 ms pages
    assert abs(len(first.pcm_24k) - groups * 5 * SAMPLES_PER_TOKEN) <= 4 * 960, (len(first.pcm_24k), groups)
    health = await (await client.get("/health")).json()
    assert health["engine"] == "funaudiochat" and health["workers"]["tts"]["alive"]
    await chat.turn(tone_pages(1.0))
    second = await chat.receive_reply(timeout=120)
    assert second.errors == [] and second.final is not None
    roles = [role for role, _ in state.history]
    assert roles == ["system", "user", "assistant", "user", "assistant"]


async def test_barge_in_cancels_generation_and_history_keeps_what_was_sent(chat_server, speaker_npy) -> None:
    engine = tiny_engine(speaker_npy, max_steps=400)
    _, connect = await chat_server(engine)
    chat = await connect()
    await chat.turn(tone_pages(1.0))
    started = await chat.receive_until_audio()  # the reply is streaming
    await chat.control(Control.START)
    await chat.send_pages(tone_pages(0.5, freq=700))
    await asyncio.sleep(0.3)
    conversation = next(iter(engine._conversations.values()))
    assert conversation.handle.done.is_set()  # the scheduler dropped the row
    assert engine._scheduler.num_active == 0
    in_flight = await chat.receive_for(0.2)  # sent before the server read `start`
    started.texts += in_flight.texts
    late = await chat.receive_for(0.5)
    assert late.audio_pages == []
    engine._sampling = SamplingParams(top_k=1, max_steps=6, seed=0)  # keep the next turn short
    await chat.control(Control.END_TURN)
    reply = await chat.receive_reply(timeout=120)
    assert reply.errors == []
    sent_before = "".join(t for t in started.texts[1:] if not t.startswith("\n[Final"))
    assert conversation.state.history[2] == ("assistant", sent_before)


async def test_concurrent_sessions_decode_together(chat_server, speaker_npy) -> None:
    engine = tiny_engine(speaker_npy, max_steps=10)
    _, connect = await chat_server(engine)
    chats = [await connect() for _ in range(3)]
    for i, chat in enumerate(chats):
        await chat.turn(tone_pages(0.5 + 0.3 * i, freq=300 + 100 * i))
    replies = await asyncio.gather(*(c.receive_reply(timeout=120) for c in chats))
    assert all(r.errors == [] and len(r.audio_pages) > 0 for r in replies)
    assert len(engine._conversations) == 3
