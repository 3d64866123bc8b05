"""The whole S2S server on the tiny golden Fun-Audio-Chat model and tiny CosyVoice3, on CPU.

The weights are random, so the audio is noise: these tests check the protocol, the token
flow (LLM steps -> speech tokens -> vocoder -> Opus), barge-in, history and concurrency.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.fakes import FAST, FakeAsr, wait_until
from tests.helpers import speech_24k, tone_pages
from tests.unit.test_sampling_query import UPSTREAM_QUERY
from utils.funaudiochat import SamplingParams
from utils.opus import encode_browser_pages
from web_demo.chat_client import ChatClient
from web_demo.server.engines.base import Transcription, TranscriptionRequest
from web_demo.server.engines.funaudiochat import FunAudioChatEngine
from web_demo.server.engines.local import WorkerVocoder
from web_demo.server.errors import EngineError
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


class CountingVocoder(WorkerVocoder):
    """Counts the speech codes pushed to each stream (what the audio length must match) and
    keeps them."""

    codes_per_stream: list[int]
    tokens_per_stream: list[list[int]]

    def open_stream(self):
        stream, counts, kept = super().open_stream(), self.codes_per_stream, self.tokens_per_stream
        counts.append(0)
        kept.append([])
        push = stream.push

        async def counting_push(tokens):
            counts[-1] += sum(1 for t in tokens if 0 <= t < 6561)
            kept[-1].extend(tokens)
            return await push(tokens)

        stream.push = counting_push  # type: ignore[method-assign]
        return stream


def tiny_engine(speaker_npy: Path, max_steps: int, cuda_graphs: bool = False) -> FunAudioChatEngine:
    """cuda_graphs: the --cuda-graphs --vocoder-cuda-graphs paths (static shapes, eager on CPU)."""
    vocoder = CountingVocoder(cfg=replace(FAST, close_timeout_s=10), init_kwargs={
        "model_dir": str(CV3 / "tiny_model"), "device": "cpu", "speaker_embedding": str(speaker_npy),
        "static_shapes": cuda_graphs})
    vocoder.codes_per_stream, vocoder.tokens_per_stream = [], []
    return FunAudioChatEngine(
        model_path=FAC / "model", tokenizer_path=FAC / "tokenizers" / "substitute_text_tokenizer",
        device="cpu", vocoder=vocoder, cuda_graphs=cuda_graphs,
        sampling=SamplingParams(top_k=1, max_steps=max_steps, seed=0))


async def test_turns_stream_tokens_through_the_vocoder_and_keep_history(chat_server, speaker_npy) -> None:
    engine = tiny_engine(speaker_npy, max_steps=12)
    client, connect = await chat_server(engine)
    chat = await connect()
    await chat.turn(encode_browser_pages(speech_24k("hello")))
    first = await chat.receive_reply(timeout=120)
    assert first.errors == [] and first.texts[0] == "[Processing...]"
    # Every speech code pushed to the vocoder comes back as 960 samples (25 Hz -> 24 kHz);
    # Opus framing adds at most one 40 ms frame of padding and the decoder lags ~155 samples.
    (codes,) = engine.vocoder.codes_per_stream
    assert 0 < codes <= 11 * 5
    assert abs(len(first.pcm_24k) - codes * SAMPLES_PER_TOKEN) <= 2 * 960
    health = await (await client.get("/health")).json()
    assert health["engine"] == "funaudiochat" and health["workers"]["vocoder"]["alive"]
    await chat.turn(tone_pages(1.0))
    second = await chat.receive_reply(timeout=120)
    assert second.errors == [] and second.final is not None
    (conversation,) = engine.conversations.values()
    roles = [role for role, _ in conversation._state.history]
    assert roles == ["system", "user", "assistant", "user", "assistant"]


async def test_barge_in_cancels_generation_and_history_keeps_what_was_sent(chat_server, speaker_npy) -> None:
    engine = tiny_engine(speaker_npy, max_steps=400)
    _, connect = await chat_server(engine)
    chat = await connect()
    await chat.turn(tone_pages(1.0))
    started = await chat.receive_until_audio()  # the reply is streaming
    await chat.control(Control.START)
    await chat.send_pages(tone_pages(0.5, freq=700))
    (conversation,) = engine.conversations.values()
    await wait_until(conversation._handle.done.is_set, timeout=2)  # the scheduler's next step
    assert engine.scheduler.num_active == 0
    in_flight = await chat.receive_for(0.2)  # sent before the server read `start`
    started.texts += in_flight.texts
    late = await chat.receive_for(0.5)
    assert late.audio_pages == []
    engine.sampling = SamplingParams(top_k=1, max_steps=6, seed=0)  # keep the next turn short
    await chat.control(Control.END_TURN)
    reply = await chat.receive_reply(timeout=120)
    assert reply.errors == []
    sent_before = "".join(t for t in started.texts[1:] if not t.startswith("\n[Final"))
    assert conversation._state.history[2] == ("assistant", sent_before)


@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["eager", "static-shapes"])
async def test_concurrent_sessions_decode_together(chat_server, speaker_npy, cuda_graphs: bool) -> None:
    engine = tiny_engine(speaker_npy, max_steps=10, cuda_graphs=cuda_graphs)
    _, connect = await chat_server(engine)
    chats = [await connect() for _ in range(3)]
    for i, chat in enumerate(chats):
        await chat.turn(tone_pages(0.5 + 0.3 * i, freq=300 + 100 * i))
    replies = await asyncio.gather(*(c.receive_reply(timeout=120) for c in chats))
    assert all(r.errors == [] and len(r.audio_pages) > 0 for r in replies)
    assert len(engine.conversations) == 3
    assert len(engine.vocoder.codes_per_stream) == 3  # one vocoder stream per reply
    assert (engine.scheduler.static is not None) is cuda_graphs
    assert engine.vocoder.health()["static_shapes"] is cuda_graphs


async def test_the_upstream_clients_sampling_settings_reach_the_model(chat_server, speaker_npy) -> None:
    engine = tiny_engine(speaker_npy, max_steps=6)  # its own settings: greedy
    client, _ = await chat_server(engine)

    async def speech_tokens(query: dict[str, str]) -> list[int]:
        chat = ChatClient(await client.ws_connect("/api/simplex?" + urlencode(query)))
        await chat.handshake()
        await chat.turn(tone_pages(0.6))
        assert (await chat.receive_reply(timeout=120)).errors == []
        await chat.aclose()
        return engine.vocoder.tokens_per_stream[-1]

    seeded = await speech_tokens(UPSTREAM_QUERY)  # sampled: top-k 250 at 0.8, seeded
    assert seeded and seeded == await speech_tokens(UPSTREAM_QUERY)
    assert seeded != await speech_tokens({**UPSTREAM_QUERY, "audio_seed": "1"})
    assert seeded != await speech_tokens({})  # greedy


class FailingAsr(FakeAsr):
    async def transcribe(self, request: TranscriptionRequest) -> Transcription:
        raise EngineError("the ASR worker is gone")


async def test_user_transcripts_come_from_the_asr_layer_and_never_cost_the_reply(
        chat_server, speaker_npy) -> None:
    engine = tiny_engine(speaker_npy, max_steps=8)
    engine.transcriber, engine.transcript_language = FakeAsr(text="hello there"), "en"
    _, connect = await chat_server(engine)
    chat = await connect("?extras=1")
    said = speech_24k("hello")
    await chat.turn(encode_browser_pages(said))
    reply = await chat.receive_reply(timeout=120)
    assert reply.errors == [] and reply.transcripts == ["hello there"]
    (heard,) = engine.transcriber.requests  # the turn's audio, as the model got it
    assert heard.language == "en" and abs(len(heard.pcm_16k) / 16000 - len(said) / 24000) < 0.1
    engine.transcriber = FailingAsr()
    await chat.turn(tone_pages(1.0))
    reply = await chat.receive_reply(timeout=120)
    assert reply.errors == [] and reply.transcripts == [] and reply.final is not None


async def test_tools_run_an_s2t_pass_on_a_fork_and_a_call_joins_the_history(
        chat_server, speaker_npy, monkeypatch) -> None:
    from utils.funaudiochat import tools as fac_tools

    engine = tiny_engine(speaker_npy, max_steps=6)
    _, connect = await chat_server(engine)
    chat = await connect()
    await chat.send_metadata({"tools": [{"name": "get_weather", "description": "Weather",
                                         "parameters": {"type": "object", "properties": {}}}]})
    # the random model answers without a call: the S2S pass speaks, the fork leaves no trace
    await chat.turn(tone_pages(0.6))
    spoken = await chat.receive_reply(timeout=120)
    assert spoken.errors == [] and len(spoken.audio_pages) > 0
    (conversation,) = engine.conversations.values()
    assert [r for r, _ in conversation._state.history] == ["system", "user", "assistant"]
    assert "# Tools" not in conversation._state.history[0][1]  # the S2S prompt, not the tools one
    # a model that calls: the call reaches the client, the exchange joins the history
    monkeypatch.setattr(fac_tools, "parse_tool_calls",
                        lambda text: ([fac_tools.ParsedCall("get_weather", "{}")], ""))
    await chat.turn(tone_pages(0.6))
    called = await chat.receive_reply(timeout=120)
    (call,) = [m for m in called.metadata if m.get("type") == "tool_call"]
    assert call["name"] == "get_weather" and called.audio_pages == []
    assert [r for r, _ in conversation._state.history] == ["system", "user", "assistant", "user", "assistant"]
    await chat.send_metadata({"type": "tool_result", "call_id": call["call_id"], "output": "sunny"})
    answered = await chat.receive_reply(timeout=120)
    assert answered.errors == [] and len(answered.audio_pages) > 0
    user_turns = [text for role, text in conversation._state.history if role == "user"]
    assert user_turns[-1] == "<tool_response>\nsunny\n</tool_response>"
