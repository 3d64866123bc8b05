"""The /api/chat wire format: every frame is one type byte followed by a payload.

Pure encode/decode functions, no I/O. Binary frames are the native protocol (moshi-derived,
as upstream Fun-Audio-Chat's browser client speaks it); JSON text frames are accepted too,
in the shape the deployment plan documents:
``{"type": "control", "action": "start"}`` and ``{"type": "metadata", "data": {...}}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from utils.ogg import split_ogg_pages
from web_demo.server.engines.base import Tool, ToolResult
from web_demo.server.errors import ProtocolError


class MsgType(IntEnum):
    HANDSHAKE = 0x00
    AUDIO = 0x01  # Ogg/Opus pages, 24 kHz mono, both directions
    TEXT = 0x02  # UTF-8, server -> client
    CONTROL = 0x03  # one byte, see Control
    METADATA = 0x04  # UTF-8 JSON object
    ERROR = 0x05  # UTF-8 message, server -> client
    PING = 0x06  # empty; keeps the browser client's 30 s inactivity timer from firing


class Control(IntEnum):
    START = 0x00
    END_TURN = 0x01
    PAUSE = 0x02
    RESTART = 0x03


PROTOCOL_VERSION = 0
MODEL_ID = 0
HANDSHAKE_FRAME = bytes([MsgType.HANDSHAKE, PROTOCOL_VERSION, MODEL_ID])

_ACTIONS = {"start": Control.START, "endTurn": Control.END_TURN,
            "pause": Control.PAUSE, "restart": Control.RESTART}
MAX_SYSTEM_PROMPT_CHARS = 16_000
MAX_TOOLS = 64
MAX_TOOL_JSON_CHARS = 64_000  # the tools of one metadata frame, and one tool result


@dataclass(frozen=True)
class AudioIn:
    """Whole Ogg pages of the connection's one continuous Ogg/Opus stream."""
    ogg: bytes


@dataclass(frozen=True)
class ControlIn:
    action: Control


@dataclass(frozen=True)
class MetadataIn:
    data: dict[str, Any]


@dataclass(frozen=True)
class Ignored:
    """A frame the server accepts and drops (client ping, client text, client handshake)."""
    kind: MsgType


ClientMessage = AudioIn | ControlIn | MetadataIn | Ignored


def decode_binary(frame: bytes) -> ClientMessage:
    """Decode one binary client frame; raises ProtocolError with a client-readable reason."""
    if not frame:
        raise ProtocolError("empty frame")
    try:
        kind = MsgType(frame[0])
    except ValueError:
        raise ProtocolError(f"unknown frame type 0x{frame[0]:02x}") from None
    payload = frame[1:]
    if kind is MsgType.AUDIO:
        return _decode_audio(payload)
    if kind is MsgType.CONTROL:
        return _decode_control(payload)
    if kind is MsgType.METADATA:
        return MetadataIn(_decode_json_object(payload))
    if kind is MsgType.ERROR:
        raise ProtocolError("error frames are server-to-client only")
    return Ignored(kind)


def decode_text(frame: str) -> ClientMessage:
    """Decode one JSON text frame (the deployment plan's control and metadata messages)."""
    message = _decode_json_object(frame.encode("utf-8", "surrogatepass"))
    kind = message.get("type")
    if kind == "control":
        action = message.get("action")
        if not isinstance(action, str) or action not in _ACTIONS:
            raise ProtocolError(f"unknown control action {action!r:.40}; expected one of {sorted(_ACTIONS)}")
        return ControlIn(_ACTIONS[action])
    if kind == "metadata":
        data = message.get("data")
        if not isinstance(data, dict):
            raise ProtocolError("metadata 'data' must be a JSON object")
        return MetadataIn(data)
    raise ProtocolError(f"unknown JSON message type {kind!r:.40}; expected 'control' or 'metadata'")


def _decode_audio(payload: bytes) -> AudioIn:
    if not payload:
        raise ProtocolError("empty audio frame")
    # sphn silently decodes garbage to nothing and is corrupted by partial pages: only
    # whole, well-formed Ogg pages may reach it.
    try:
        split_ogg_pages(payload)
    except ValueError as exc:
        raise ProtocolError(f"audio frame is not whole Ogg/Opus pages: {exc}") from None
    return AudioIn(payload)


def _decode_control(payload: bytes) -> ControlIn:
    if len(payload) != 1:
        raise ProtocolError(f"control frame needs exactly one byte, got {len(payload)}")
    try:
        return ControlIn(Control(payload[0]))
    except ValueError:
        raise ProtocolError(f"unknown control code 0x{payload[0]:02x}") from None


def _decode_json_object(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError:
        raise ProtocolError("payload is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"payload is not valid JSON: {exc.msg}") from None
    except RecursionError:
        raise ProtocolError("JSON payload is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer longer than Python's digit limit
        raise ProtocolError(f"payload is not acceptable JSON: {str(exc)[:80]}") from None
    if not isinstance(value, dict):
        raise ProtocolError("JSON payload must be an object")
    return value


def decode_tools(value: Any) -> tuple[Tool, ...]:
    """Metadata `"tools"`: functions the model may call, each {"name", "description",
    "parameters"} or OpenAI's {"type": "function", "function": {...}}; [] removes them."""
    if not isinstance(value, list) or len(value) > MAX_TOOLS:
        raise ProtocolError(f"tools must be a list of at most {MAX_TOOLS} functions")
    if len(json.dumps(value)) > MAX_TOOL_JSON_CHARS:
        raise ProtocolError(f"tools longer than {MAX_TOOL_JSON_CHARS} characters of JSON")
    tools = []
    for entry in value:
        function = entry.get("function", entry) if isinstance(entry, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(function, dict) or not isinstance(name, str) or not name:
            raise ProtocolError("each tool needs a string 'name'")
        parameters = function.get("parameters")
        parameters = {} if parameters is None else parameters
        if not isinstance(parameters, dict) or not isinstance(function.get("description", ""), str):
            raise ProtocolError(f"tool {function['name']!r:.40}: 'parameters' must be an object and "
                                "'description' a string")
        tools.append(Tool(function["name"], function.get("description", ""), parameters))
    return tuple(tools)


def decode_tool_result(data: dict[str, Any]) -> ToolResult:
    """Metadata {"type": "tool_result", "call_id": ..., "output": ...}: a call's outcome."""
    call_id, output = data.get("call_id"), data.get("output")
    if not isinstance(call_id, str) or not isinstance(output, str):
        raise ProtocolError("a tool_result needs a string 'call_id' and a string 'output'")
    if len(output) > MAX_TOOL_JSON_CHARS:
        raise ProtocolError(f"tool_result output longer than {MAX_TOOL_JSON_CHARS} characters")
    return ToolResult(call_id, output)


def encode_audio(ogg: bytes) -> bytes:
    return bytes([MsgType.AUDIO]) + ogg


def encode_text(text: str) -> bytes:
    return bytes([MsgType.TEXT]) + text.encode("utf-8")


def encode_metadata(data: dict[str, Any]) -> bytes:
    return bytes([MsgType.METADATA]) + json.dumps(data, ensure_ascii=False).encode("utf-8")


def encode_error(message: str) -> bytes:
    return bytes([MsgType.ERROR]) + message.encode("utf-8")


def encode_ping() -> bytes:
    return bytes([MsgType.PING])


def encode_control(action: Control) -> bytes:
    """Client-side helper (tests, scripts, benchmarks)."""
    return bytes([MsgType.CONTROL, action])
