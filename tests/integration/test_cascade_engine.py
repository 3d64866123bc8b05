"""The cascade engine inside the real app: worker failure handling and the real LLM client."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import numpy as np
import pytest
from aiohttp import web

from tests.fakes import FAST, FakeAsr, ToneTts, wait_until
from tests.helpers import tone_pages
from web_demo.server.app import LIFECYCLE, make_app
from web_demo.server.config import AsrConfig, HttpConfig
from web_demo.server.engines.base import ReplyRequest
from web_demo.server.engines.builders import build_asr_engine
from web_demo.server.engines.cascade import CascadeEngine, sentences
from web_demo.server.engines.local import WorkerTtsEngine
from web_demo.server.engines.responder import ChatTurn, EchoResponder, OpenAIChatResponder
from web_demo.server.errors import EngineError

PAGES = tone_pages(0.5)


def tone_cascade(chunk_delay_s: float = 0.1) -> tuple[CascadeEngine, WorkerTtsEngine]:
    tts = WorkerTtsEngine(handler="tests.fakes:ToneTtsHandler", cfg=FAST,
                          init_kwargs={"chunk_delay_s": chunk_delay_s, "chunks_per_sentence": 5})
    return CascadeEngine(asr=FakeAsr(), responder=EchoResponder(), tts=tts), tts


@pytest.mark.slow
async def test_tts_worker_sigkill_mid_turn(chat_server) -> None:
    engine, tts = tone_cascade()
    client, connect = await chat_server(engine)
    victim, bystander = await connect(), await connect()
    await victim.turn(PAGES)
    started = await victim.receive_for(0.8)
    assert started.audio_pages, "the reply should be streaming when the worker dies"
    os.kill(tts.worker.health()["pid"], signal.SIGKILL)
    await wait_until(lambda: not tts.worker.alive)
    await bystander.turn(PAGES)  # arrives while the worker restarts: it waits, then is served
    reply = await victim.receive_reply()
    assert any("tts worker died (killed by SIGKILL)" in e and "retry" in e
               for e in reply.errors), reply.errors
    health = await (await client.get("/health")).json()
    assert health["status"] in ("degraded", "healthy")
    assert health["workers"]["tts"]["last_exit"] == "killed by SIGKILL"
    reply = await bystander.receive_reply()
    assert reply.errors == [] and len(reply.audio_pages) > 10  # it never noticed
    await wait_until(lambda: tts.worker.alive)
    assert tts.worker.health()["restarts"] == 1
    await victim.turn(PAGES)  # the victim's next turn works
    reply = await victim.receive_reply()
    assert reply.errors == [] and len(reply.audio_pages) > 10
    assert (await (await client.get("/health")).json())["status"] == "healthy"


async def test_conversation_history_holds_what_was_heard_capped() -> None:
    engine, _ = tone_cascade()
    engine.tts = ToneTts()  # in-process: this test is about the history, not the worker
    conversation = engine.open_session("s", history_turns=2)
    for i in range(3):
        async for _ in conversation.reply(ReplyRequest(turn_index=i, system_prompt=None,
                                                       user_audio_16k=np.zeros(1600, np.float32))):
            pass
        conversation.commit_reply(f"reply {i}")
    assert [(t.user, t.assistant) for t in conversation.history] == [
        (FakeAsr.text, "reply 1"), (FakeAsr.text, "reply 2")]
    conversation.reset()
    assert conversation.history == ()


async def test_a_turns_voice_is_the_tts_voice_else_the_engines() -> None:
    tts = ToneTts()
    engine = CascadeEngine(asr=FakeAsr(), responder=EchoResponder(), tts=tts, voice="en-us")
    conversation = engine.open_session("s", history_turns=2)
    spoken = []
    for i, voice in enumerate(("coral", None)):
        async for _ in conversation.reply(ReplyRequest(turn_index=i, system_prompt=None, voice=voice,
                                                       user_audio_16k=np.zeros(1600, np.float32))):
            pass
        spoken.append(set(tts.voices))
        tts.voices.clear()
    assert spoken == [{"coral"}, {"en-us"}]


async def test_sentences_regroups_stream() -> None:
    async def pieces():
        for p in ["Hel", "lo there. How", " are you? Fine", "\nBye"]:
            yield p

    assert [s async for s in sentences(pieces())] == ["Hello there. ", "How are you? ", "Fine\n", "Bye"]


async def test_openai_responder_streams_and_sends_history(aiohttp_server) -> None:
    seen: list[dict] = []

    async def completions(request: web.Request) -> web.StreamResponse:
        seen.append(await request.json())
        assert request.headers["Authorization"] == "Bearer k"
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in ["Paris ", "is the ", "capital."]:
            event = {"choices": [{"delta": {"content": piece}}]}
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    server = await aiohttp_server(app)
    responder = OpenAIChatResponder(base_url=str(server.make_url("/v1")), model="m", api_key="k")
    await responder.start()
    try:
        history = (ChatTurn(user="hi", assistant="hello"),)
        text = "".join([p async for p in responder.respond("Be brief.", history, "capital of France?")])
        for cap in (10, 1000):  # a client's cap, under the responder's own (256)
            _ = [p async for p in responder.respond(None, (), "hi", max_tokens=cap)]
    finally:
        await responder.aclose()
    assert text == "Paris is the capital."
    assert seen[0]["stream"] is True and seen[0]["model"] == "m"
    assert [m["role"] for m in seen[0]["messages"]] == ["system", "user", "assistant", "user"]
    assert seen[0]["messages"][-1]["content"] == "capital of France?"
    assert [body["max_tokens"] for body in seen] == [256, 10, 256]


async def test_openai_responder_http_error_is_engine_error(aiohttp_server) -> None:
    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"error": "overloaded"}, status=503)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", broken)
    server = await aiohttp_server(app)
    responder = OpenAIChatResponder(base_url=str(server.make_url("/v1")), model="m")
    await responder.start()
    try:
        with pytest.raises(EngineError, match="HTTP 503") as info:
            async for _ in responder.respond(None, (), "hi"):
                pass
        assert info.value.retryable
    finally:
        await responder.aclose()


async def test_asr_url_puts_the_cascade_in_front_of_a_remote_asr_service(aiohttp_server, chat_server) -> None:
    """--asr-url: the cascade's ears are our own ASR service over HTTP (any OpenAI-compatible
    transcription server would do); what it heard is the turn's transcript and history."""
    heard_remotely = FakeAsr(text="What is the weather like?")
    asr_app = make_app(HttpConfig(api_key="asr-key"), asr=heard_remotely)
    asr_server = await aiohttp_server(asr_app)
    await asyncio.wait_for(asr_app[LIFECYCLE].started.wait(), 10)
    asr = build_asr_engine(AsrConfig(url=str(asr_server.make_url("")), api_key="asr-key",
                                     language="en"), FAST)
    engine = CascadeEngine(asr=asr, responder=EchoResponder(), tts=ToneTts(), language="en")
    _, connect = await chat_server(engine)
    chat = await connect("?extras=1")
    await chat.turn(PAGES)
    reply = await chat.receive_reply()
    assert reply.errors == [] and reply.transcripts == ["What is the weather like?"]
    (request,) = heard_remotely.requests  # the turn's audio crossed as a WAV, 16 kHz
    assert request.language == "en" and abs(len(request.pcm_16k) / 16000 - 0.5) < 0.1
