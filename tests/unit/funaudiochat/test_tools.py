"""Function calling in Fun-Audio-Chat's format: the tools prompt, parsing calls, tool results,
and the history fork the engine decides on a call with."""

from __future__ import annotations

import json

import torch

from tests.fac_golden import wav
from utils.funaudiochat import ConversationState, SamplingParams, UserTurn, stream_turn
from utils.funaudiochat.tools import (
    ParsedCall,
    function_calling_prompt,
    parse_tool_calls,
    tool_response_text,
)

# upstream examples/infer_s2t.py's two example tools, as a client would send them
TOOLS = [
    {"name": "get_weather", "description": "查询天气", "parameters": {"type": "object", "properties": {
        "location": {"type": "string", "description": "地点", "default": "当前位置"},
        "time": {"type": "string", "description": "时间", "default": "当前时间"}}, "required": []}},
    {"name": "check_battery", "description": "电量查询，例如：现在还剩多少电",
     "parameters": {"type": "object", "properties": {}, "required": []}},
]

# What upstream's FUNCTION_CALLING_PROMPT becomes with those tools, character for character.
EXPECTED = (
    "You are asked to generate text tokens.\n"
    "# Tools\n"
    "\n"
    "You may call one or more functions to assist with the user query.\n"
    "\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n"
    '{"type": "function", "function": {"name": "get_weather", "description": "查询天气", '
    '"parameters": {"type": "object", "properties": {"location": {"type": "string", '
    '"description": "地点", "default": "当前位置"}, "time": {"type": "string", "description": "时间", '
    '"default": "当前时间"}}, "required": []}}}\n'
    '{"type": "function", "function": {"name": "check_battery", '
    '"description": "电量查询，例如：现在还剩多少电", '
    '"parameters": {"type": "object", "properties": {}, "required": []}}}\n'
    "</tools>\n"
    "\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n"
    "<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>"
)


def test_the_tools_prompt_is_the_models_format_exactly() -> None:
    assert function_calling_prompt(TOOLS) == EXPECTED


def test_a_tool_without_parameters_gets_an_empty_object_schema() -> None:
    line = function_calling_prompt([{"name": "ping"}]).split("<tools>\n")[1].split("\n")[0]
    assert json.loads(line) == {"type": "function", "function": {
        "name": "ping", "description": "", "parameters": {"type": "object", "properties": {}}}}


def test_calls_are_parsed_in_order_and_the_rest_is_kept() -> None:
    text = ('Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"location": "北京"}}\n'
            '</tool_call><tool_call>{"name": "check_battery", "arguments": "{}"}</tool_call>'
            '<tool_call>not json</tool_call>')
    calls, rest = parse_tool_calls(text)
    assert calls == [ParsedCall("get_weather", '{"location": "北京"}'), ParsedCall("check_battery", "{}")]
    assert rest == "Let me check.<tool_call>not json</tool_call>"
    assert parse_tool_calls("just an answer") == ([], "just an answer")
    assert parse_tool_calls('<tool_call>{"arguments": {}}</tool_call>')[0] == []  # no name


def test_tool_results_are_qwen_tool_response_blocks() -> None:
    assert tool_response_text(['{"temp": 20}', "ok"]) == (
        '<tool_response>\n{"temp": 20}\n</tool_response>\n<tool_response>\nok\n</tool_response>')


def test_a_fork_answers_beside_the_history_and_its_exchange_can_be_adopted(runtime) -> None:
    state = ConversationState()
    state.add_user_message(runtime, UserTurn(audio=wav("audio_turn2.wav")[:16000]))
    state.add_assistant_message("Earlier reply.")
    before = state.history
    fork = state.fork(function_calling_prompt(TOOLS))
    assert fork.history[0] == ("system", EXPECTED) and fork.history[1:] == before[1:]
    steps = list(stream_turn(runtime, fork, UserTurn(audio=wav("audio_turn1.wav")[:16000]),
                             SamplingParams(max_steps=4, top_k=1, text_greedy=True), mode="s2t"))
    assert steps and all(s.speech_tokens is None for s in steps)  # S2T: text only
    assert state.history == before  # the conversation itself is untouched
    state.adopt_last_exchange(fork)
    assert state.history[:3] == before and [r for r, _ in state.history[3:]] == ["user", "assistant"]
    assert state.history[-1] == fork.history[-1]
    adopted = state.messages[-2]
    assert adopted.audio_rows is not None and torch.equal(adopted.audio_rows, fork.messages[-2].audio_rows)
