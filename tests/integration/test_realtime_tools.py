"""Function calling over /v1/realtime with the real `openai` SDK: tools in session.update, a call
the engine makes becomes a function_call output item with its argument events, the client's
function_call_output goes back to the engine, and the answer to it is spoken. Driven with a
scripted engine and with the cascade in front of a fake OpenAI-compatible LLM."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from tests.fakes import FakeAsr, ToneTts
from tests.integration.test_tool_calls import fake_llm
from tests.realtime_helpers import (
    MANUAL_TURNS,
    append_audio,
    collect,
    connect,
    is_done,
    rms,
    tone_24k,
)
from web_demo.server.engines.base import AudioDelta, ReplyEvent, ReplyRequest, TextDelta, ToolCall
from web_demo.server.engines.cascade import CascadeEngine
from web_demo.server.engines.responder import OpenAIChatResponder

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather at a place",
           "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}
SESSION = {**MANUAL_TURNS, "tools": [WEATHER], "tool_choice": "auto"}


@dataclass
class ScriptedEngine:
    """Calls get_weather when offered tools; answers a tool result in speech."""
    name: str = "scripted"
    requests: list[ReplyRequest] = field(default_factory=list)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def health(self) -> dict[str, Any]:
        return {"engine": self.name, "models": {}}

    def open_session(self, session_id: str, *, history_turns: int) -> ScriptedEngine:
        return self

    async def reply(self, request: ReplyRequest) -> AsyncGenerator[ReplyEvent, None]:
        self.requests.append(request)
        if request.tools and not request.tool_results:
            yield ToolCall("call_42", request.tools[0].name, '{"location": "Paris"}')
            return
        yield TextDelta("It is sunny.")
        yield AudioDelta(tone_24k(0.4))

    def commit_reply(self, heard_text: str) -> None:
        return None

    def reset(self) -> None:
        return None


async def a_turn(conn: Any) -> None:
    await append_audio(conn, tone_24k(0.6), speed=20)
    await conn.input_audio_buffer.commit()
    await conn.response.create()


async def test_a_call_goes_out_as_a_function_call_item_and_its_output_is_answered(chat_server) -> None:
    engine = ScriptedEngine()
    client, _ = await chat_server(engine)
    async with connect(client.server.port) as conn:
        await conn.session.update(session=SESSION)
        await a_turn(conn)
        called = await collect(conn, is_done())
        (done,) = called.done()
        assert done.status == "completed"
        (item,) = done.output
        assert (item.type, item.name, item.call_id, item.arguments) == (
            "function_call", "get_weather", "call_42", '{"location": "Paris"}')
        assert called.in_order("response.created", "response.output_item.added",
                               "response.function_call_arguments.delta",
                               "response.function_call_arguments.done", "response.output_item.done",
                               "response.done")
        args = called.one("response.function_call_arguments.done")
        assert (args.name, args.call_id, json.loads(args.arguments)) == ("get_weather", "call_42",
                                                                         {"location": "Paris"})
        assert called.audio() == b""  # a call is not spoken
        (tool,) = engine.requests[0].tools
        assert (tool.name, tool.parameters) == ("get_weather", WEATHER["parameters"])
        await conn.conversation.item.create(item={"type": "function_call_output", "call_id": "call_42",
                                                  "output": '{"sky": "sunny"}'})
        await conn.response.create()
        answered = await collect(conn, is_done())
    assert answered.done()[0].status == "completed"
    assert answered.transcript() == "It is sunny." and rms(answered.pcm16()) > 0.1
    added = [e.item for e in answered.of("conversation.item.added")]
    assert added[0].type == "function_call_output" and added[0].call_id == "call_42"
    second = engine.requests[1]
    assert [(r.call_id, r.output) for r in second.tool_results] == [("call_42", '{"sky": "sunny"}')]


async def test_tool_choice_none_offers_no_tools(chat_server) -> None:
    engine = ScriptedEngine()
    client, _ = await chat_server(engine)
    async with connect(client.server.port) as conn:
        await conn.session.update(session={**SESSION, "tool_choice": "none"})
        await a_turn(conn)
        reply = await collect(conn, is_done())
    assert engine.requests[0].tools == () and reply.transcript() == "It is sunny."


async def test_the_cascade_calls_through_its_llm_and_speaks_the_answer(aiohttp_server, chat_server) -> None:
    seen: list[dict[str, Any]] = []
    llm = await aiohttp_server(fake_llm(seen))
    engine = CascadeEngine(asr=FakeAsr(text="What is the weather in Paris?"), tts=ToneTts(),
                           responder=OpenAIChatResponder(base_url=str(llm.make_url("/v1")), model="m"))
    client, _ = await chat_server(engine)
    async with connect(client.server.port) as conn:
        await conn.session.update(session={**SESSION, "temperature": 0.7})
        await a_turn(conn)
        called = await collect(conn, is_done())
        args = called.one("response.function_call_arguments.done")
        assert (args.call_id, args.name, args.arguments) == ("call_7", "get_weather", '{"location": "Paris"}')
        assert seen[0]["tools"][0]["function"]["name"] == "get_weather"
        await conn.conversation.item.create(item={"type": "function_call_output", "call_id": "call_7",
                                                  "output": '{"sky": "sunny"}'})
        await conn.response.create(response={"temperature": 1.1})  # this response only
        answered = await collect(conn, is_done())
    assert answered.transcript() == "It is sunny in Paris." and rms(answered.pcm16()) > 0.1
    assert [body["temperature"] for body in seen] == [0.7, 1.1]  # the client's, to the LLM
    assert [m["role"] for m in seen[1]["messages"]] == ["system", "user", "assistant", "tool"]
