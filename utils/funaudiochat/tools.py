"""Function calling in Fun-Audio-Chat's own format (upstream utils/constant.py and
examples/infer_s2t.py): tools go into an S2T system prompt, calls come back as
<tool_call>{"name": ..., "arguments": {...}}</tool_call> blocks in the text, and results go
back as <tool_response> blocks of the next user message (Qwen3's convention; the text backbone
is Qwen3, and upstream shows no result turn of its own).

The prompt text is part of the model's input format, which it was trained on: it must stay
exactly as it is, whitespace included.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .prompt import S2T_SYSTEM_PROMPT

_TOOLS_BLOCK = "\n".join((  # appended to the S2T prompt; {tools_definition}: one JSON per tool
    "",
    "# Tools",
    "",
    "You may call one or more functions to assist with the user query.",
    "",
    "You are provided with function signatures within <tools></tools> XML tags:",
    "<tools>",
    "{tools_definition}",
    "</tools>",
    "",
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:",
    "<tool_call>",
    '{"name": <function-name>, "arguments": <args-json-object>}',
    "</tool_call>",
))

_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: str  # JSON text of the arguments object


def function_calling_prompt(tools: Sequence[dict[str, Any]]) -> str:
    """The S2T system prompt offering `tools` (each {"name", "description", "parameters"})."""
    lines = "\n".join(json.dumps({"type": "function", "function": {
        "name": t["name"], "description": t.get("description", ""),
        "parameters": t.get("parameters") or {"type": "object", "properties": {}}}},
        ensure_ascii=False) for t in tools)
    return S2T_SYSTEM_PROMPT + _TOOLS_BLOCK.replace("{tools_definition}", lines)


def parse_tool_calls(text: str) -> tuple[list[ParsedCall], str]:
    """The calls in a reply's text, and the text outside them. A block that is not a JSON
    object with a string "name" is left in the text (the model did not make a valid call)."""
    calls: list[ParsedCall] = []
    rest: list[str] = []
    end = 0
    for match in _CALL.finditer(text):
        call = _parse_call(match.group(1))
        if call is None:
            continue
        rest.append(text[end:match.start()])
        end = match.end()
        calls.append(call)
    rest.append(text[end:])
    return calls, "".join(rest).strip()


def _parse_call(body: str) -> ParsedCall | None:
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", {})
    if isinstance(arguments, str):  # some models quote the object
        return ParsedCall(value["name"], arguments)
    return ParsedCall(value["name"], json.dumps(arguments, ensure_ascii=False))


def tool_response_text(outputs: Sequence[str]) -> str:
    """The user message that gives the model the outputs of its calls, in call order."""
    return "\n".join(f"<tool_response>\n{output}\n</tool_response>" for output in outputs)
