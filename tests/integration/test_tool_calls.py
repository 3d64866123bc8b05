"""Function calling over /api/chat: tools offered in metadata, the cascade's OpenAI-compatible
LLM (a fake one here) calls one, the call reaches the client, the result goes back, and the
answer to it is spoken."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from aiohttp import web

from tests.fakes import FakeAsr, ToneTts
from tests.helpers import tone_pages
from web_demo.server.engines.cascade import CascadeEngine
from web_demo.server.engines.responder import OpenAIChatResponder

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather at a place",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}


def fake_llm(seen: list[dict[str, Any]]) -> web.Application:
    """Calls get_weather (in two streamed pieces) unless the last message is its result."""

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append(body)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if body["messages"][-1]["role"] == "tool":
            deltas: list[dict[str, Any]] = [{"content": "It is sunny "}, {"content": "in Paris."}]
        else:
            deltas = [{"tool_calls": [{"index": 0, "id": "call_7", "type": "function",
                                       "function": {"name": "get_weather", "arguments": '{"loca'}}]},
                      {"tool_calls": [{"index": 0, "function": {"arguments": 'tion": "Paris"}'}}]}]
        for delta in deltas:
            await response.write(f"data: {json.dumps({'choices': [{'delta': delta}]})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    return app


async def test_a_tool_call_goes_out_and_its_result_comes_back_spoken(aiohttp_server, chat_server) -> None:
    seen: list[dict[str, Any]] = []
    llm = await aiohttp_server(fake_llm(seen))
    tts = ToneTts()
    engine = CascadeEngine(asr=FakeAsr(text="What is the weather in Paris?"), tts=tts,
                           responder=OpenAIChatResponder(base_url=str(llm.make_url("/v1")), model="m"))
    _, connect = await chat_server(engine)
    chat = await connect()
    await chat.send_metadata({"tools": [WEATHER_TOOL]})
    await chat.turn(tone_pages(0.5))
    called = await chat.receive_reply()
    (call,) = [m for m in called.metadata if m.get("type") == "tool_call"]
    assert call == {"type": "tool_call", "call_id": "call_7", "name": "get_weather",
                    "arguments": '{"location": "Paris"}'}
    assert called.audio_pages == [] and tts.texts == []  # a call is not spoken
    assert seen[0]["tools"] == [WEATHER_TOOL]
    await chat.send_metadata({"type": "tool_result", "call_id": "call_7", "output": '{"sky": "sunny"}'})
    answer = await chat.receive_reply()
    assert answer.final_text == "It is sunny in Paris."
    assert len(answer.pcm_24k) > 2400 and np.abs(answer.pcm_24k).max() > 0.1
    assert tts.texts == ["It is sunny in Paris."]
    messages = seen[1]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"]
    assert messages[1]["content"] == "What is the weather in Paris?"
    assert messages[2]["tool_calls"] == [{"id": "call_7", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"location": "Paris"}'}}]
    assert messages[3] == {"role": "tool", "tool_call_id": "call_7", "content": '{"sky": "sunny"}'}


async def test_bad_tool_metadata_gets_an_error_frame_and_the_session_goes_on(chat_server) -> None:
    _, connect = await chat_server()
    chat = await connect()
    for bad, reason in [({"tools": "get_weather"}, "list"), ({"tools": [{"description": "x"}]}, "name"),
                        ({"tools": [{"name": "f", "parameters": []}]}, "parameters"),
                        ({"type": "tool_result", "call_id": 7}, "call_id")]:
        await chat.send_metadata(bad)
        errors = (await chat.receive_for(0.3)).errors
        assert errors and reason in errors[0], (bad, errors)
    await chat.turn(tone_pages(0.4))
    assert (await chat.receive_reply()).final is not None
