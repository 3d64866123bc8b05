"""Realtime API client events: JSON text frames -> the dataclasses of `messages`. Pure, no I/O.

Both dialects decode to the same types. GA is the API as the `openai` SDK's
`types/realtime` defines it (`session.type`, `audio.input.format: {"type": "audio/pcm"}`,
`output_modalities`); beta is the earlier preview (`OpenAI-Beta: realtime=v1`: top-level
`modalities`, `voice`, `input_audio_format: "pcm16"`). `SessionUpdate.dialect` says which one a
`session.update` spoke, so the session can answer in it.

Every refusal is a `RealtimeProtocolError` carrying an error `code`, the `param` at fault
(a field path such as "session.audio.input.format.rate") and the client's `event_id`; the
session answers it with `events.error_event_for(exc)` and the connection stays up. Messages
quote client values only briefly.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Final, Literal, TypeAlias, cast

from web_demo.server.protocol import MAX_SYSTEM_PROMPT_CHARS
from web_demo.server.realtime.audio_formats import GA_FORMAT_TYPES, AudioFormat
from web_demo.server.realtime.messages import (
    OFF,
    ContentPart,
    ConversationItem,
    ErrorCode,
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionChoice,
    FunctionTool,
    InputAudio,
    InputAudioAppend,
    InputAudioClear,
    InputAudioCommit,
    InputText,
    InputTranscription,
    ItemCreate,
    ItemDelete,
    ItemRetrieve,
    ItemTruncate,
    MaxTokens,
    MessageItem,
    Modality,
    Off,
    OutputAudio,
    OutputAudioClear,
    OutputText,
    RealtimeClientEvent,
    RealtimeProtocolError,
    ResponseCancel,
    ResponseCreate,
    Role,
    SessionType,
    SessionUpdate,
    ToolChoice,
    TurnDetection,
)

MAX_APPEND_B64_CHARS: Final = 15 * 1024 * 1024  # OpenAI's limit on one append
MAX_ID_CHARS: Final = 64
MAX_OUTPUT_TOKENS: Final = 4096
_QUOTE_CHARS = 40  # of a client value, in an error message
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def decode_client_event(frame: str | bytes, *,
                        input_format: AudioFormat = AudioFormat.PCM16) -> RealtimeClientEvent:
    """One client text frame -> its event; raises RealtimeProtocolError.

    `input_format` is the session's current one: audio is checked against it (PCM16 needs
    whole 2-byte samples).
    """
    message = _parse_json(frame)
    event_id = message.get("event_id")
    if event_id is not None and (not isinstance(event_id, str) or len(event_id) > MAX_ID_CHARS):
        raise _invalid("event_id", f"a string of at most {MAX_ID_CHARS} characters", event_id)
    kind = message.get("type")
    if not isinstance(kind, str):
        raise RealtimeProtocolError("invalid_event", "the event has no string 'type'", param="type",
                                    event_id=event_id)
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise RealtimeProtocolError("unknown_event", f"unknown event type {_quote(kind)}",
                                    param="type", event_id=event_id)
    try:
        return decoder(message, event_id, input_format)
    except RealtimeProtocolError as exc:
        exc.event_id = event_id
        raise


def _parse_json(frame: str | bytes) -> dict[str, Any]:
    try:
        value = json.loads(frame)
    except UnicodeDecodeError:
        raise RealtimeProtocolError("invalid_json", "the frame is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise RealtimeProtocolError("invalid_json", f"the frame is not valid JSON: {exc.msg}") from None
    except RecursionError:
        raise RealtimeProtocolError("invalid_json", "the JSON is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer longer than Python's digit limit
        raise RealtimeProtocolError("invalid_json", f"the JSON is not acceptable: {str(exc)[:80]}") from None
    if not isinstance(value, dict):
        raise RealtimeProtocolError("invalid_json", "the event must be a JSON object")
    return value


# -- field readers: `path` is the enclosing object's path ("" at the top), JSON null = not given --

def _quote(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str) and len(value) > _QUOTE_CHARS:  # slice first: it may be megabytes
        return repr(value[:_QUOTE_CHARS]) + "..."
    text = repr(value)
    return text if len(text) <= _QUOTE_CHARS else text[:_QUOTE_CHARS] + "..."


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _invalid(param: str, expected: str, value: Any) -> RealtimeProtocolError:
    return RealtimeProtocolError("invalid_value", f"{param} must be {expected}, got {_quote(value)}",
                                 param=param)


def _missing(param: str) -> RealtimeProtocolError:
    return RealtimeProtocolError("invalid_value", f"missing required field {param}", param=param)


def _value(obj: dict[str, Any], key: str, path: str, required: bool) -> Any:
    value = obj.get(key)
    if value is None and required:
        raise _missing(_join(path, key))
    return value


def _str(obj: dict[str, Any], key: str, path: str, *, required: bool = False,
         max_chars: int | None = None) -> str | None:
    value = _value(obj, key, path, required)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid(_join(path, key), "a string", value)
    if max_chars is not None and len(value) > max_chars:
        raise RealtimeProtocolError("invalid_value", f"{_join(path, key)} is longer than {max_chars} "
                                    f"characters ({len(value)})", param=_join(path, key))
    return value


def _req_str(obj: dict[str, Any], key: str, path: str, *, max_chars: int | None = None) -> str:
    value = _str(obj, key, path, required=True, max_chars=max_chars)
    assert value is not None
    return value


def _id(obj: dict[str, Any], key: str, path: str, *, required: bool = False) -> str | None:
    value = _str(obj, key, path, required=required, max_chars=MAX_ID_CHARS)
    if value == "":
        raise _invalid(_join(path, key), "a non-empty id", value)
    return value


def _req_id(obj: dict[str, Any], key: str, path: str) -> str:
    value = _id(obj, key, path, required=True)
    assert value is not None
    return value


def _int(obj: dict[str, Any], key: str, path: str, *, lo: int = 0, hi: int | None = None,
         required: bool = False) -> int | None:
    value = _value(obj, key, path, required)
    if value is None:
        return None
    # a JS client's 500.0 is 500; JSON true is no number
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    expected = f"an integer >= {lo}" + (f" and <= {hi}" if hi is not None else "")
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        raise _invalid(_join(path, key), expected, value)
    return value


def _req_int(obj: dict[str, Any], key: str, path: str) -> int:
    value = _int(obj, key, path, required=True)
    assert value is not None
    return value


def _num(obj: dict[str, Any], key: str, path: str, *, lo: float, hi: float) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise _invalid(_join(path, key), f"a number in [{lo}, {hi}]", value)
    return float(value)


def _bool(obj: dict[str, Any], key: str, path: str) -> bool | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, bool):
        raise _invalid(_join(path, key), "true or false", value)
    return value


def _choice(obj: dict[str, Any], key: str, path: str, options: tuple[str, ...], *,
            code: ErrorCode = "invalid_value") -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or value not in options:
        param = _join(path, key)
        raise RealtimeProtocolError(code, f"{param} must be one of {', '.join(options)}; got "
                                    f"{_quote(value)}", param=param)
    return value


def _obj(obj: dict[str, Any], key: str, path: str, *, required: bool = False) -> dict[str, Any] | None:
    value = _value(obj, key, path, required)
    if value is not None and not isinstance(value, dict):
        raise _invalid(_join(path, key), "an object", value)
    return value


def _list(obj: dict[str, Any], key: str, path: str, *, required: bool = False) -> list[Any] | None:
    value = _value(obj, key, path, required)
    if value is not None and not isinstance(value, list):
        raise _invalid(_join(path, key), "an array", value)
    return value


def _objects(values: list[Any], param: str) -> list[tuple[dict[str, Any], str]]:
    """Each element with its path, e.g. (tool, "session.tools[0]")."""
    out = []
    for i, value in enumerate(values):
        if not isinstance(value, dict):
            raise _invalid(f"{param}[{i}]", "an object", value)
        out.append((value, f"{param}[{i}]"))
    return out


def _b64_audio(obj: dict[str, Any], key: str, path: str, fmt: AudioFormat | None, *,
               too_large: ErrorCode, required: bool = False) -> bytes | None:
    """Base64 audio, capped; `fmt`: check it holds whole samples of that format."""
    text = _str(obj, key, path, required=required)
    if text is None:
        return None
    param = _join(path, key)
    if len(text) > MAX_APPEND_B64_CHARS:
        raise RealtimeProtocolError(too_large, f"{param} is {len(text)} characters of base64; the "
                                    f"limit is {MAX_APPEND_B64_CHARS} (15 MiB)", param=param)
    try:
        # padding is optional in practice; the alphabet is not
        audio = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise RealtimeProtocolError("invalid_base64", f"{param} is not valid base64", param=param) from None
    if fmt is not None and len(audio) % fmt.bytes_per_sample:
        raise RealtimeProtocolError("invalid_value", f"{param} must hold whole 16-bit PCM samples "
                                    f"(an even number of bytes), got {len(audio)} bytes", param=param)
    return audio


# -- session.update --

_GA_ONLY = ("type", "audio", "output_modalities", "max_output_tokens", "truncation", "prompt")
_BETA_ONLY = ("modalities", "voice", "speed", "input_audio_format", "output_audio_format",
              "turn_detection", "input_audio_transcription", "input_audio_noise_reduction",
              "max_response_output_tokens")
_BETA_FORMATS = tuple(f.value for f in AudioFormat)


def _decode_session_update(message: dict[str, Any], event_id: str | None,
                           input_format: AudioFormat) -> SessionUpdate:
    session = _obj(message, "session", "", required=True)
    assert session is not None
    ga = [k for k in _GA_ONLY if k in session]
    beta = [k for k in _BETA_ONLY if k in session]
    if ga and beta:
        raise RealtimeProtocolError("invalid_value", f"session mixes GA fields ({', '.join(ga)}) with "
                                    f"beta fields ({', '.join(beta)})", param="session")
    shared = SessionUpdate(
        event_id=event_id, dialect="ga" if ga else "beta" if beta else None,
        model=_str(session, "model", "session", max_chars=200),
        instructions=_str(session, "instructions", "session", max_chars=MAX_SYSTEM_PROMPT_CHARS),
        tools=_tools(session, "session"), tool_choice=_tool_choice(session, "session"),
        temperature=_num(session, "temperature", "session", lo=0.0, hi=2.0))
    return _ga_session(session, shared) if ga else _beta_session(session, shared) if beta else shared


def _ga_session(session: dict[str, Any], shared: SessionUpdate) -> SessionUpdate:
    audio = _obj(session, "audio", "session") or {}
    audio_in = _obj(audio, "input", "session.audio") or {}
    audio_out = _obj(audio, "output", "session.audio") or {}
    path_in, path_out = "session.audio.input", "session.audio.output"
    return replace(
        shared,
        session_type=cast(SessionType | None,
                          _choice(session, "type", "session", ("realtime", "transcription"))),
        output_modality=_modality(session, "output_modalities", "session"),
        input_format=_ga_format(audio_in, path_in),
        output_format=_ga_format(audio_out, path_out),
        turn_detection=_turn_detection(audio_in, "turn_detection", path_in),
        transcription=_transcription(audio_in, "transcription", path_in),
        voice=_voice(audio_out, path_out),
        speed=_num(audio_out, "speed", path_out, lo=0.25, hi=1.5),
        max_output_tokens=_max_tokens(session, "max_output_tokens", "session"))


def _beta_session(session: dict[str, Any], shared: SessionUpdate) -> SessionUpdate:
    return replace(
        shared,
        output_modality=_modality(session, "modalities", "session"),
        input_format=_beta_format(session, "input_audio_format", "session"),
        output_format=_beta_format(session, "output_audio_format", "session"),
        turn_detection=_turn_detection(session, "turn_detection", "session"),
        transcription=_transcription(session, "input_audio_transcription", "session"),
        voice=_str(session, "voice", "session", max_chars=MAX_ID_CHARS),
        speed=_num(session, "speed", "session", lo=0.25, hi=1.5),
        max_output_tokens=_max_tokens(session, "max_response_output_tokens", "session"))


def _modality(obj: dict[str, Any], key: str, path: str) -> Modality | None:
    """["audio"] (GA), ["text", "audio"] (beta): audio with its transcript; ["text"]: text only."""
    values = _list(obj, key, path)
    if values is None:
        return None
    if not values or any(v not in ("audio", "text") for v in values):
        raise _invalid(_join(path, key), 'a non-empty array of "audio" and "text"', values)
    return "audio" if "audio" in values else "text"


def _ga_format(obj: dict[str, Any], path: str) -> AudioFormat | None:
    fmt = _obj(obj, "format", path)
    if fmt is None:
        return None
    path = _join(path, "format")
    kind = _req_str(fmt, "type", path)
    if kind not in GA_FORMAT_TYPES:
        raise RealtimeProtocolError("unsupported_audio_format", f"audio format {_quote(kind)} is not "
                                    f"served; use one of {', '.join(GA_FORMAT_TYPES)}",
                                    param=_join(path, "type"))
    rate = fmt.get("rate")
    if kind == "audio/pcm" and rate is not None and rate != 24_000:
        raise RealtimeProtocolError("unsupported_audio_format", f"audio/pcm is served at 24000 Hz only, "
                                    f"got rate {_quote(rate)}", param=_join(path, "rate"))
    return GA_FORMAT_TYPES[kind]


def _beta_format(obj: dict[str, Any], key: str, path: str) -> AudioFormat | None:
    name = _choice(obj, key, path, _BETA_FORMATS, code="unsupported_audio_format")
    return None if name is None else AudioFormat(name)


def _turn_detection(obj: dict[str, Any], key: str, path: str) -> TurnDetection | Off | None:
    if key not in obj:
        return None
    config = _obj(obj, key, path)
    if config is None:
        return OFF
    path = _join(path, key)
    kind = _choice(config, "type", path, ("server_vad", "semantic_vad"), code="unsupported_value")
    default = TurnDetection()
    return TurnDetection(
        type=cast(Literal["server_vad", "semantic_vad"], kind or "server_vad"),
        threshold=_or(_num(config, "threshold", path, lo=0.0, hi=1.0), default.threshold),
        prefix_padding_ms=_or(_int(config, "prefix_padding_ms", path, hi=60_000), default.prefix_padding_ms),
        silence_duration_ms=_or(_int(config, "silence_duration_ms", path, hi=60_000),
                                default.silence_duration_ms),
        create_response=_or(_bool(config, "create_response", path), default.create_response),
        interrupt_response=_or(_bool(config, "interrupt_response", path), default.interrupt_response),
        idle_timeout_ms=_int(config, "idle_timeout_ms", path, lo=1),
        eagerness=cast(Literal["low", "medium", "high", "auto"],
                       _choice(config, "eagerness", path, ("low", "medium", "high", "auto")) or "auto"))


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _transcription(obj: dict[str, Any], key: str, path: str) -> InputTranscription | Off | None:
    if key not in obj:
        return None
    config = _obj(obj, key, path)
    if config is None:
        return OFF
    path = _join(path, key)
    return InputTranscription(model=_str(config, "model", path, max_chars=200),
                              language=_str(config, "language", path, max_chars=MAX_ID_CHARS),
                              prompt=_str(config, "prompt", path, max_chars=MAX_SYSTEM_PROMPT_CHARS))


def _voice(obj: dict[str, Any], path: str) -> str | None:
    """GA voices are names or {"id": ...} (custom voices); either way a name here."""
    voice = obj.get("voice")
    if isinstance(voice, dict):
        return _req_str(voice, "id", _join(path, "voice"), max_chars=MAX_ID_CHARS)
    return _str(obj, "voice", path, max_chars=MAX_ID_CHARS)


def _tools(obj: dict[str, Any], path: str) -> tuple[FunctionTool, ...] | None:
    tools = _list(obj, "tools", path)
    if tools is None:
        return None
    out = []
    for tool, tool_path in _objects(tools, _join(path, "tools")):
        _choice(tool, "type", tool_path, ("function",), code="unsupported_value")
        name = _req_str(tool, "name", tool_path)
        if not _TOOL_NAME.fullmatch(name):
            raise _invalid(_join(tool_path, "name"), "1-64 letters, digits, '_' or '-'", name)
        out.append(FunctionTool(name=name, description=_str(tool, "description", tool_path) or "",
                                parameters=_obj(tool, "parameters", tool_path) or {}))
    return tuple(out)


def _tool_choice(obj: dict[str, Any], path: str) -> ToolChoice | None:
    choice = obj.get("tool_choice")
    param = _join(path, "tool_choice")
    if choice is None or (isinstance(choice, str) and choice in ("auto", "none", "required")):
        return cast(ToolChoice | None, choice)
    if isinstance(choice, dict):
        _choice(choice, "type", param, ("function",), code="unsupported_value")
        return FunctionChoice(_req_str(choice, "name", param, max_chars=64))
    raise _invalid(param, '"auto", "none", "required" or {"type": "function", "name": ...}', choice)


def _max_tokens(obj: dict[str, Any], key: str, path: str) -> MaxTokens | None:
    if obj.get(key) == "inf":
        return "inf"
    value = obj.get(key)
    if value is not None and not isinstance(value, int | float):
        raise _invalid(_join(path, key), f'"inf" or an integer in [1, {MAX_OUTPUT_TOKENS}]', value)
    return _int(obj, key, path, lo=1, hi=MAX_OUTPUT_TOKENS)


# -- the other client events --

def _decode_append(message: dict[str, Any], event_id: str | None, fmt: AudioFormat) -> InputAudioAppend:
    audio = _b64_audio(message, "audio", "", fmt, too_large="append_too_large", required=True)
    assert audio is not None
    return InputAudioAppend(event_id=event_id, audio=audio)


def _decode_item_create(message: dict[str, Any], event_id: str | None, fmt: AudioFormat) -> ItemCreate:
    item = _obj(message, "item", "", required=True)
    assert item is not None
    return ItemCreate(event_id=event_id, previous_item_id=_id(message, "previous_item_id", ""),
                      item=_item(item, "item", fmt))


def _item(item: dict[str, Any], path: str, fmt: AudioFormat) -> ConversationItem:
    kind = _req_str(item, "type", path)
    item_id = _id(item, "id", path)
    if kind == "message":
        role = cast(Role | None, _choice(item, "role", path, ("user", "system", "assistant")))
        if role is None:
            raise _missing(_join(path, "role"))
        parts = _list(item, "content", path, required=True)
        assert parts is not None
        content = tuple(_part(part, part_path, role, fmt)
                        for part, part_path in _objects(parts, _join(path, "content")))
        return MessageItem(id=item_id, role=role, content=content)
    if kind == "function_call_output":
        return FunctionCallOutputItem(id=item_id, call_id=_req_id(item, "call_id", path),
                                      output=_req_str(item, "output", path))
    if kind == "function_call":
        return FunctionCallItem(id=item_id, call_id=_id(item, "call_id", path),
                                name=_req_str(item, "name", path, max_chars=64),
                                arguments=_req_str(item, "arguments", path))
    raise RealtimeProtocolError("unsupported_value", f"item type {_quote(kind)} is not served; use "
                                "message, function_call or function_call_output", param=_join(path, "type"))


_PART_TYPES: dict[Role, tuple[str, ...]] = {
    "user": ("input_text", "input_audio"),
    "system": ("input_text",),
    "assistant": ("output_text", "text", "output_audio", "audio"),  # GA names, then beta
}


def _part(part: dict[str, Any], path: str, role: Role, fmt: AudioFormat) -> ContentPart:
    kind = _req_str(part, "type", path)
    if kind not in _PART_TYPES[role]:
        code: ErrorCode = "unsupported_value" if kind == "input_image" else "invalid_value"
        raise RealtimeProtocolError(code, f"a {role} message takes content of type "
                                    f"{', '.join(_PART_TYPES[role])}; got {_quote(kind)}",
                                    param=_join(path, "type"))
    if kind == "input_text":
        return InputText(_req_str(part, "text", path))
    if kind in ("output_text", "text"):
        return OutputText(_req_str(part, "text", path))
    transcript = _str(part, "transcript", path)
    if kind == "input_audio":
        audio = _b64_audio(part, "audio", path, fmt, too_large="invalid_value", required=True)
        assert audio is not None
        return InputAudio(audio, transcript)
    # assistant audio would be in the output format, which this event does not tell
    return OutputAudio(transcript, _b64_audio(part, "audio", path, None, too_large="invalid_value"))


def _decode_truncate(message: dict[str, Any], event_id: str | None, _: AudioFormat) -> ItemTruncate:
    return ItemTruncate(event_id=event_id, item_id=_req_id(message, "item_id", ""),
                        content_index=_req_int(message, "content_index", ""),
                        audio_end_ms=_req_int(message, "audio_end_ms", ""))


def _decode_response_create(message: dict[str, Any], event_id: str | None,
                            _: AudioFormat) -> ResponseCreate:
    response = _obj(message, "response", "")
    if response is None:
        return ResponseCreate(event_id=event_id)
    path = "response"
    if response.get("input") is not None:
        raise RealtimeProtocolError("unsupported_value", "response.input (a custom context) is not "
                                    "served; the response reads the conversation", param="response.input")
    audio_out = _obj(_obj(response, "audio", path) or {}, "output", "response.audio") or {}
    modality_key = "output_modalities" if "output_modalities" in response else "modalities"
    tokens_key = "max_output_tokens" if "max_output_tokens" in response else "max_response_output_tokens"
    output_format = _ga_format(audio_out, "response.audio.output")
    if output_format is None:
        output_format = _beta_format(response, "output_audio_format", path)
    return ResponseCreate(
        event_id=event_id,
        instructions=_str(response, "instructions", path, max_chars=MAX_SYSTEM_PROMPT_CHARS),
        output_modality=_modality(response, modality_key, path),
        conversation=cast(Literal["auto", "none"] | None,
                          _choice(response, "conversation", path, ("auto", "none"))),
        tools=_tools(response, path), tool_choice=_tool_choice(response, path),
        max_output_tokens=_max_tokens(response, tokens_key, path),
        temperature=_num(response, "temperature", path, lo=0.0, hi=2.0),
        voice=_voice(audio_out, "response.audio.output") or _str(response, "voice", path,
                                                                  max_chars=MAX_ID_CHARS),
        output_format=output_format,
        metadata=_metadata(response, path))


def _metadata(obj: dict[str, Any], path: str) -> dict[str, str] | None:
    metadata = _obj(obj, "metadata", path)
    if metadata is not None and not all(isinstance(v, str) and len(k) <= 64 and len(v) <= 512
                                        for k, v in metadata.items()):
        raise _invalid(_join(path, "metadata"), "an object of strings (keys <= 64, values <= 512 chars)",
                       metadata)
    return metadata


_Decoder: TypeAlias = Callable[[dict[str, Any], "str | None", AudioFormat], RealtimeClientEvent]

_DECODERS: dict[str, _Decoder] = {
    "session.update": _decode_session_update,
    "input_audio_buffer.append": _decode_append,
    "input_audio_buffer.commit": lambda m, e, f: InputAudioCommit(event_id=e),
    "input_audio_buffer.clear": lambda m, e, f: InputAudioClear(event_id=e),
    "output_audio_buffer.clear": lambda m, e, f: OutputAudioClear(event_id=e),
    "conversation.item.create": _decode_item_create,
    "conversation.item.truncate": _decode_truncate,
    "conversation.item.delete": lambda m, e, f: ItemDelete(event_id=e, item_id=_req_id(m, "item_id", "")),
    "conversation.item.retrieve": lambda m, e, f: ItemRetrieve(event_id=e,
                                                               item_id=_req_id(m, "item_id", "")),
    "response.create": _decode_response_create,
    "response.cancel": lambda m, e, f: ResponseCancel(event_id=e, response_id=_id(m, "response_id", "")),
}
