"""The Realtime API wire format: client events in, server events out, audio formats.

Server events are checked against the `openai` SDK's own pydantic models (GA and beta), and
client events are written as the SDK's param TypedDicts describe them.
"""

from __future__ import annotations

import base64
import json
import warnings
from typing import Any

import numpy as np
import pydantic
import pytest
from openai.types.beta.realtime import RealtimeClientEvent as BetaClientEvent
from openai.types.beta.realtime import RealtimeServerEvent as BetaServerEvent
from openai.types.beta.realtime.conversation_item_create_event_param import (
    ConversationItemCreateEventParam as BetaItemCreateParam,
)
from openai.types.beta.realtime.response_create_event_param import (
    ResponseCreateEventParam as BetaResponseCreateParam,
)
from openai.types.beta.realtime.session_update_event_param import (
    SessionUpdateEventParam as BetaSessionUpdateParam,
)
from openai.types.realtime import (
    ConversationItemCreateEventParam,
    ConversationItemTruncateEventParam,
    InputAudioBufferAppendEventParam,
    RealtimeClientEvent,
    RealtimeServerEvent,
    ResponseCreateEventParam,
    SessionUpdateEventParam,
)

from web_demo.server.errors import EngineBusy, ProtocolError
from web_demo.server.realtime import audio_formats, events
from web_demo.server.realtime.audio_formats import AudioFormat
from web_demo.server.realtime.events import ContentRef
from web_demo.server.realtime.messages import (
    OFF,
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
    MessageItem,
    OutputAudio,
    OutputAudioClear,
    OutputText,
    RealtimeProtocolError,
    ResponseCancel,
    ResponseCreate,
    SessionConfig,
    SessionUpdate,
    TurnDetection,
)
from web_demo.server.realtime.protocol import MAX_APPEND_B64_CHARS, decode_client_event

GA_SERVER: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(RealtimeServerEvent)
BETA_SERVER: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(BetaServerEvent)
GA_CLIENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(RealtimeClientEvent)
BETA_CLIENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(BetaClientEvent)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode(event: dict[str, Any], **kwargs: Any) -> Any:
    return decode_client_event(json.dumps(event), **kwargs)


def refused(event: dict[str, Any] | str | bytes, **kwargs: Any) -> RealtimeProtocolError:
    frame = json.dumps(event) if isinstance(event, dict) else event
    with pytest.raises(RealtimeProtocolError) as info:
        decode_client_event(frame, **kwargs)
    assert len(info.value.message) < 300, "error messages stay short"
    return info.value


# -- decoding every client event --

PCM = bytes(range(256)) * 4  # 1024 bytes: whole 16-bit samples

SIMPLE_EVENTS: list[tuple[dict[str, Any], Any]] = [
    ({"type": "input_audio_buffer.append", "event_id": "e1", "audio": b64(PCM)},
     InputAudioAppend(event_id="e1", audio=PCM)),
    ({"type": "input_audio_buffer.commit"}, InputAudioCommit()),
    ({"type": "input_audio_buffer.clear", "event_id": "e2"}, InputAudioClear(event_id="e2")),
    ({"type": "output_audio_buffer.clear"}, OutputAudioClear()),
    ({"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0, "audio_end_ms": 1500},
     ItemTruncate(item_id="item_1", content_index=0, audio_end_ms=1500)),
    ({"type": "conversation.item.delete", "item_id": "item_1"}, ItemDelete(item_id="item_1")),
    ({"type": "conversation.item.retrieve", "item_id": "item_1"}, ItemRetrieve(item_id="item_1")),
    ({"type": "response.create"}, ResponseCreate()),
    ({"type": "response.create", "response": None}, ResponseCreate()),
    ({"type": "response.cancel"}, ResponseCancel()),
    ({"type": "response.cancel", "response_id": "resp_1"}, ResponseCancel(response_id="resp_1")),
    ({"type": "conversation.item.create", "previous_item_id": "root",
      "item": {"type": "function_call_output", "call_id": "call_1", "output": '{"ok": true}'}},
     ItemCreate(previous_item_id="root",
                item=FunctionCallOutputItem(call_id="call_1", output='{"ok": true}'))),
    ({"type": "conversation.item.create",
      "item": {"type": "function_call", "id": "item_f", "call_id": "call_1", "name": "get_time",
               "arguments": "{}"}},
     ItemCreate(item=FunctionCallItem(id="item_f", call_id="call_1", name="get_time", arguments="{}"))),
]


@pytest.mark.parametrize("event, expected", SIMPLE_EVENTS, ids=[e["type"] for e, _ in SIMPLE_EVENTS])
def test_decodes_each_client_event(event: dict[str, Any], expected: Any) -> None:
    assert decode(event) == expected
    assert decode_client_event(json.dumps(event).encode()) == expected  # bytes frames too
    GA_CLIENT.validate_python(event)  # the examples are real client events
    BETA_CLIENT.validate_python(event)


GA_SESSION: SessionUpdateEventParam = {
    "type": "session.update", "event_id": "evt_ga",
    "session": {
        "type": "realtime", "model": "gpt-realtime", "instructions": "Be brief.",
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "turn_detection": {"type": "server_vad", "threshold": 0.6, "silence_duration_ms": 400,
                                   "prefix_padding_ms": 200, "create_response": True,
                                   "interrupt_response": False},
                "transcription": {"model": "whisper-1", "language": "en"},
                "noise_reduction": {"type": "near_field"},
            },
            "output": {"format": {"type": "audio/pcmu"}, "voice": "marin", "speed": 1.2},
        },
        "tools": [{"type": "function", "name": "get_weather", "description": "Weather now",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "max_output_tokens": 1024,
        "tracing": "auto",
    },
}

BETA_SESSION: BetaSessionUpdateParam = {
    "type": "session.update", "event_id": "evt_beta",
    "session": {
        "model": "gpt-4o-realtime-preview", "instructions": "Be brief.", "modalities": ["text", "audio"],
        "voice": "marin", "speed": 1.2, "input_audio_format": "pcm16", "output_audio_format": "g711_ulaw",
        "turn_detection": {"type": "server_vad", "threshold": 0.6, "silence_duration_ms": 400,
                           "prefix_padding_ms": 200, "create_response": True, "interrupt_response": False},
        "input_audio_transcription": {"model": "whisper-1", "language": "en"},
        "tools": [{"type": "function", "name": "get_weather", "description": "Weather now",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "tool_choice": "required", "temperature": 0.7, "max_response_output_tokens": 1024,
    },
}

EXPECTED_SESSION = dict(
    instructions="Be brief.", output_modality="audio", input_format=AudioFormat.PCM16,
    output_format=AudioFormat.G711_ULAW,
    turn_detection=TurnDetection(threshold=0.6, silence_duration_ms=400, prefix_padding_ms=200,
                                 interrupt_response=False),
    transcription=InputTranscription(model="whisper-1", language="en"), voice="marin", speed=1.2,
    tools=(FunctionTool(name="get_weather", description="Weather now",
                        parameters={"type": "object", "properties": {"city": {"type": "string"}}}),),
    max_output_tokens=1024)


def test_ga_session_update() -> None:
    GA_CLIENT.validate_python(GA_SESSION)
    update = decode(dict(GA_SESSION))
    assert update == SessionUpdate(event_id="evt_ga", dialect="ga", session_type="realtime",
                                   model="gpt-realtime", tool_choice=FunctionChoice("get_weather"),
                                   **EXPECTED_SESSION)  # type: ignore[arg-type]


def test_beta_session_update_normalises_to_the_same_fields() -> None:
    BETA_CLIENT.validate_python(BETA_SESSION)
    update = decode(dict(BETA_SESSION))
    assert update == SessionUpdate(event_id="evt_beta", dialect="beta", model="gpt-4o-realtime-preview",
                                   tool_choice="required", temperature=0.7,
                                   **EXPECTED_SESSION)  # type: ignore[arg-type]


@pytest.mark.parametrize("session, dialect", [
    ({"instructions": "hi"}, None),  # only shared fields: the session keeps its dialect
    ({"tools": [], "temperature": 0.9}, None),
    ({"type": "realtime"}, "ga"),
    ({"output_modalities": ["text"]}, "ga"),
    ({"modalities": ["text"]}, "beta"),
    ({"voice": "alloy"}, "beta"),
])
def test_session_update_records_its_dialect(session: dict[str, Any], dialect: str | None) -> None:
    assert decode({"type": "session.update", "session": session}).dialect == dialect


def test_modalities_normalise_to_one_output_modality() -> None:
    for session, modality in [({"output_modalities": ["audio"]}, "audio"),
                              ({"output_modalities": ["text"]}, "text"),
                              ({"modalities": ["text", "audio"]}, "audio"),
                              ({"modalities": ["text"]}, "text")]:
        assert decode({"type": "session.update", "session": session}).output_modality == modality


def test_null_turn_detection_and_transcription_switch_them_off() -> None:
    ga = decode({"type": "session.update", "session": {
        "type": "realtime", "audio": {"input": {"turn_detection": None, "transcription": None}}}})
    beta = decode({"type": "session.update", "session": {
        "turn_detection": None, "input_audio_transcription": None}})
    for update in (ga, beta):
        assert update.turn_detection is OFF and update.transcription is OFF
        config = SessionConfig(transcription=InputTranscription(model="whisper-1")).updated(update)
        assert config.turn_detection is None and config.transcription is None
    untouched = decode({"type": "session.update", "session": {"type": "realtime"}})
    assert untouched.turn_detection is None and untouched.transcription is None
    assert SessionConfig().updated(untouched) == SessionConfig()


def test_turn_detection_defaults_and_semantic_vad() -> None:
    update = decode({"type": "session.update", "session": {"turn_detection": {"type": "semantic_vad",
                                                                              "eagerness": "high"}}})
    assert update.turn_detection == TurnDetection(type="semantic_vad", eagerness="high")
    update = decode({"type": "session.update", "session": {"turn_detection": {}}})
    assert update.turn_detection == TurnDetection()


@pytest.mark.parametrize("fmt, expected", [
    ({"type": "audio/pcm"}, AudioFormat.PCM16),
    ({"type": "audio/pcm", "rate": 24000}, AudioFormat.PCM16),
    ({"type": "audio/pcmu"}, AudioFormat.G711_ULAW),
    ({"type": "audio/pcma"}, AudioFormat.G711_ALAW),
])
def test_ga_formats(fmt: dict[str, Any], expected: AudioFormat) -> None:
    update = decode({"type": "session.update",
                     "session": {"type": "realtime", "audio": {"input": {"format": fmt},
                                                               "output": {"format": fmt}}}})
    assert update.input_format is expected and update.output_format is expected


@pytest.mark.parametrize("name", ["pcm16", "g711_ulaw", "g711_alaw"])
def test_beta_formats(name: str) -> None:
    update = decode({"type": "session.update", "session": {"input_audio_format": name,
                                                           "output_audio_format": name}})
    assert update.input_format is AudioFormat(name) and update.output_format is AudioFormat(name)


@pytest.mark.parametrize("session, param", [
    ({"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
     "session.audio.input.format.rate"),
    ({"type": "realtime", "audio": {"output": {"format": {"type": "audio/opus"}}}},
     "session.audio.output.format.type"),
    ({"input_audio_format": "opus"}, "session.input_audio_format"),
    ({"output_audio_format": "pcm24"}, "session.output_audio_format"),
])
def test_unsupported_audio_formats(session: dict[str, Any], param: str) -> None:
    error = refused({"type": "session.update", "event_id": "evt_9", "session": session})
    assert (error.code, error.param, error.event_id) == ("unsupported_audio_format", param, "evt_9")


def test_config_updated_merges_given_fields_only() -> None:
    config = SessionConfig(voice="ours", instructions="old")
    config = config.updated(decode(dict(GA_SESSION)))
    assert config.voice == "marin" and config.instructions == "Be brief."
    assert config.output_format is AudioFormat.G711_ULAW and config.temperature == 0.8
    assert config.updated(SessionUpdate(instructions="new")) == SessionConfig(
        **{**config.__dict__, "instructions": "new"})


def test_item_create_messages_in_both_dialects() -> None:
    user: ConversationItemCreateEventParam = {
        "type": "conversation.item.create", "event_id": "c1", "previous_item_id": "item_0",
        "item": {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "hello"}, {"type": "input_audio", "audio": b64(PCM)}]}}
    GA_CLIENT.validate_python(user)
    assert decode(dict(user)) == ItemCreate(
        event_id="c1", previous_item_id="item_0",
        item=MessageItem(role="user", content=(InputText("hello"), InputAudio(PCM))))
    system: ConversationItemCreateEventParam = {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "rule"}]}}
    assert decode(dict(system)).item == MessageItem(role="system", content=(InputText("rule"),))
    ga_assistant = {"type": "conversation.item.create", "item": {
        "type": "message", "role": "assistant", "id": "item_a",
        "content": [{"type": "output_text", "text": "hi"}, {"type": "output_audio", "transcript": "hi"}]}}
    beta_assistant: BetaItemCreateParam = {"type": "conversation.item.create", "item": {
        "type": "message", "role": "assistant", "id": "item_a",
        "content": [{"type": "text", "text": "hi"}, {"type": "audio", "transcript": "hi"}]}}
    GA_CLIENT.validate_python(ga_assistant)
    BETA_CLIENT.validate_python(beta_assistant)
    expected = MessageItem(id="item_a", role="assistant", content=(OutputText("hi"), OutputAudio("hi")))
    assert decode(ga_assistant).item == expected == decode(dict(beta_assistant)).item


def test_g711_item_audio_takes_odd_byte_counts() -> None:
    item = {"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": b64(b"abc")}]}
    decoded = decode({"type": "conversation.item.create", "item": item}, input_format=AudioFormat.G711_ALAW)
    assert decoded.item.content == (InputAudio(b"abc"),)


def test_response_create_in_both_dialects() -> None:
    ga: ResponseCreateEventParam = {"type": "response.create", "event_id": "r1", "response": {
        "instructions": "Say hi", "output_modalities": ["text"], "conversation": "none",
        "tool_choice": "none", "max_output_tokens": "inf", "metadata": {"topic": "greeting"},
        "audio": {"output": {"format": {"type": "audio/pcma"}, "voice": "cedar"}},
        "tools": [{"type": "function", "name": "noop", "parameters": {"type": "object"}}]}}
    beta: BetaResponseCreateParam = {"type": "response.create", "event_id": "r1", "response": {
        "instructions": "Say hi", "modalities": ["text"], "conversation": "none", "tool_choice": "none",
        "max_response_output_tokens": "inf", "metadata": {"topic": "greeting"},
        "output_audio_format": "g711_alaw", "voice": "cedar",
        "tools": [{"type": "function", "name": "noop", "parameters": {"type": "object"}}]}}
    GA_CLIENT.validate_python(ga)
    BETA_CLIENT.validate_python(beta)
    expected = ResponseCreate(event_id="r1", instructions="Say hi", output_modality="text",
                              conversation="none", tool_choice="none", max_output_tokens="inf",
                              metadata={"topic": "greeting"}, output_format=AudioFormat.G711_ALAW,
                              voice="cedar",
                              tools=(FunctionTool(name="noop", parameters={"type": "object"}),))
    assert decode(dict(ga)) == expected == decode(dict(beta))


def test_sdk_typed_append_and_truncate() -> None:
    append: InputAudioBufferAppendEventParam = {"type": "input_audio_buffer.append", "audio": b64(PCM)}
    truncate: ConversationItemTruncateEventParam = {"type": "conversation.item.truncate", "item_id": "item_x",
                                                    "content_index": 0, "audio_end_ms": 320}
    assert decode(dict(append)) == InputAudioAppend(audio=PCM)
    assert decode(dict(truncate)) == ItemTruncate(item_id="item_x", content_index=0, audio_end_ms=320)


# -- refusals --

@pytest.mark.parametrize("frame, code", [
    ("not json", "invalid_json"),
    ("[1, 2]", "invalid_json"),
    (b"\xff\xfe{}", "invalid_json"),
    ("[" * 100_000 + "]" * 100_000, "invalid_json"),
    ('{"n": ' + "9" * 5000 + "}", "invalid_json"),
    ("{}", "invalid_event"),
    ('{"type": 5}', "invalid_event"),
    ('{"type": "transcription_session.update", "session": {}}', "unknown_event"),
])
def test_malformed_frames(frame: str | bytes, code: str) -> None:
    error = refused(frame)
    assert error.code == code
    assert isinstance(error, ProtocolError)  # the session's ProtocolError handling applies


def test_unknown_event_names_the_type_briefly() -> None:
    error = refused({"type": "x" * 10_000, "event_id": "evt_u"})
    assert error.code == "unknown_event" and error.event_id == "evt_u"
    assert "'xxxx" in error.message and len(error.message) < 100


@pytest.mark.parametrize("event, param", [
    ({"type": "session.update"}, "session"),
    ({"type": "session.update", "session": "realtime"}, "session"),
    ({"type": "session.update", "session": {"type": "sip"}}, "session.type"),
    ({"type": "session.update", "session": {"type": "realtime", "modalities": ["audio"]}}, "session"),
    ({"type": "session.update", "session": {"instructions": 5}}, "session.instructions"),
    ({"type": "session.update", "session": {"instructions": "x" * 20_000}}, "session.instructions"),
    ({"type": "session.update", "session": {"output_modalities": []}}, "session.output_modalities"),
    ({"type": "session.update", "session": {"output_modalities": ["video"]}}, "session.output_modalities"),
    ({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
        "turn_detection": {"type": "server_vad", "threshold": 2}}}}},
     "session.audio.input.turn_detection.threshold"),
    ({"type": "session.update", "session": {"turn_detection": {"silence_duration_ms": "500"}}},
     "session.turn_detection.silence_duration_ms"),
    ({"type": "session.update", "session": {"turn_detection": {"create_response": 1}}},
     "session.turn_detection.create_response"),
    ({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"format": {}}}}},
     "session.audio.input.format.type"),
    ({"type": "session.update", "session": {"type": "realtime", "audio": {"output": {"speed": 3}}}},
     "session.audio.output.speed"),
    ({"type": "session.update", "session": {"tools": [{"type": "function"}]}}, "session.tools[0].name"),
    ({"type": "session.update", "session": {"tools": [{"name": "a b"}]}}, "session.tools[0].name"),
    ({"type": "session.update", "session": {"tools": ["f"]}}, "session.tools[0]"),
    ({"type": "session.update", "session": {"tool_choice": "sometimes"}}, "session.tool_choice"),
    ({"type": "session.update", "session": {"max_output_tokens": 0}}, "session.max_output_tokens"),
    ({"type": "session.update", "session": {"max_response_output_tokens": "lots"}},
     "session.max_response_output_tokens"),
    ({"type": "session.update", "session": {"temperature": True}}, "session.temperature"),
    ({"type": "input_audio_buffer.append"}, "audio"),
    ({"type": "input_audio_buffer.append", "audio": 12}, "audio"),
    ({"type": "input_audio_buffer.append", "audio": b64(b"odd")}, "audio"),
    ({"type": "input_audio_buffer.commit", "event_id": 7}, "event_id"),
    ({"type": "conversation.item.create"}, "item"),
    ({"type": "conversation.item.create", "item": {"type": "message", "content": []}}, "item.role"),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "user"}}, "item.content"),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                    "content": [{"type": "input_text"}]}},
     "item.content[0].text"),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "system",
                                                    "content": [{"type": "input_audio", "audio": ""}]}},
     "item.content[0].type"),
    ({"type": "conversation.item.create", "item": {"type": "function_call_output", "output": "x"}},
     "item.call_id"),
    ({"type": "conversation.item.create", "previous_item_id": "x" * 65,
      "item": {"type": "function_call_output", "call_id": "c", "output": "x"}}, "previous_item_id"),
    ({"type": "conversation.item.truncate", "item_id": "i", "content_index": -1, "audio_end_ms": 0},
     "content_index"),
    ({"type": "conversation.item.truncate", "item_id": "i", "content_index": 0, "audio_end_ms": True},
     "audio_end_ms"),
    ({"type": "conversation.item.truncate", "content_index": 0, "audio_end_ms": 0}, "item_id"),
    ({"type": "conversation.item.delete", "item_id": ""}, "item_id"),
    ({"type": "conversation.item.retrieve"}, "item_id"),
    ({"type": "response.create", "response": {"conversation": "conv_1"}}, "response.conversation"),
    ({"type": "response.create", "response": {"metadata": {"k": 1}}}, "response.metadata"),
    ({"type": "response.cancel", "response_id": 3}, "response_id"),
])
def test_invalid_values_name_the_field(event: dict[str, Any], param: str) -> None:
    error = refused({**event, "event_id": event.get("event_id", "evt_bad")})
    assert (error.code, error.param) == ("invalid_value", param)
    if param != "event_id":
        assert error.event_id == "evt_bad"


@pytest.mark.parametrize("event, param", [
    ({"type": "session.update", "session": {"tools": [{"type": "mcp", "server_label": "x"}]}},
     "session.tools[0].type"),
    ({"type": "session.update", "session": {"tool_choice": {"type": "mcp", "server_label": "x"}}},
     "session.tool_choice.type"),
    ({"type": "session.update", "session": {"turn_detection": {"type": "push_to_talk"}}},
     "session.turn_detection.type"),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}}, "item.content[0].type"),
    ({"type": "conversation.item.create", "item": {"type": "mcp_call", "id": "x"}}, "item.type"),
    ({"type": "response.create", "response": {"input": []}}, "response.input"),
])
def test_unsupported_features(event: dict[str, Any], param: str) -> None:
    error = refused(event)
    assert (error.code, error.param) == ("unsupported_value", param)


def test_invalid_base64() -> None:
    for text in ["not base64!", "QUJD=X", "A"]:
        error = refused({"type": "input_audio_buffer.append", "event_id": "a1", "audio": text})
        assert (error.code, error.param, error.event_id) == ("invalid_base64", "audio", "a1")
    assert decode({"type": "input_audio_buffer.append", "audio": "AAA"}).audio == b"\x00\x00"  # unpadded


def test_append_cap_is_15_mib_of_base64() -> None:
    at_limit = "A" * MAX_APPEND_B64_CHARS  # 15 MiB of base64: 11.25 MiB of PCM
    assert MAX_APPEND_B64_CHARS == 15 * 1024 * 1024
    assert len(decode({"type": "input_audio_buffer.append", "audio": at_limit}).audio) == \
        MAX_APPEND_B64_CHARS * 3 // 4
    error = refused({"type": "input_audio_buffer.append", "event_id": "big", "audio": at_limit + "AAAA"})
    assert (error.code, error.param, error.event_id) == ("append_too_large", "audio", "big")
    assert "AAAA" not in error.message


def test_odd_pcm16_is_refused_but_g711_is_not() -> None:
    event = {"type": "input_audio_buffer.append", "audio": b64(b"\x01\x02\x03")}
    assert refused(event).code == "invalid_value"
    assert decode(event, input_format=AudioFormat.G711_ULAW).audio == b"\x01\x02\x03"


def test_error_event_for_a_refusal() -> None:
    error = refused({"type": "nope", "event_id": "evt_client"})
    event = events.error_event_for(error)
    assert event["type"] == "error" and event["event_id"].startswith("event_")
    assert event["error"] == {"type": "invalid_request_error", "code": "unknown_event",
                              "message": error.message, "param": "type", "event_id": "evt_client"}
    busy = events.error_event_for(EngineBusy("all slots taken"), client_event_id="evt_r")
    assert busy["error"]["type"] == "server_error" and busy["error"]["code"] == "engine_busy"
    assert busy["error"]["event_id"] == "evt_r"
    for ev in (event, busy):
        check_ga(ev)
        check_beta(ev)


# -- server events against the SDK's models --

def extras(value: Any, path: str = "") -> list[str]:
    """Paths of fields the SDK's models do not declare (they allow extras; we want none)."""
    found: list[str] = []
    if isinstance(value, pydantic.BaseModel):
        found += [f"{path}.{key}".lstrip(".") for key in (value.model_extra or {})]
        for name in type(value).model_fields:
            found += extras(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, list):
        for i, element in enumerate(value):
            found += extras(element, f"{path}[{i}]")
    return found


def check_ga(event: dict[str, Any], *, allowed: tuple[str, ...] = ()) -> None:
    model = GA_SERVER.validate_python(event)
    assert model.type == event["type"]
    assert sorted(extras(model)) == sorted(allowed)


def check_beta(event: dict[str, Any], *, allowed: tuple[str, ...] = ()) -> None:
    model = BETA_SERVER.validate_python(event)
    assert model.type == event["type"]
    assert sorted(extras(model)) == sorted(allowed)


def items() -> list[Any]:
    return [
        MessageItem(id=events.new_id("item"), role="user", content=(InputAudio(PCM, None),)),
        MessageItem(id=events.new_id("item"), role="user", content=(InputText("hi"), InputAudio(PCM, "hi"))),
        MessageItem(id=events.new_id("item"), role="system", content=(InputText("rule"),)),
        MessageItem(id=events.new_id("item"), role="assistant", content=(OutputAudio("hello"),)),
        MessageItem(id=events.new_id("item"), role="assistant", content=(OutputText("hello"),)),
        FunctionCallItem(id=events.new_id("item"), call_id=events.new_id("call"), name="f", arguments="{}"),
        FunctionCallOutputItem(id=events.new_id("item"), call_id="call_1", output="42"),
    ]


def all_server_events(dialect: Any) -> list[dict[str, Any]]:
    ref = ContentRef(response_id=events.new_id("resp"), item_id=events.new_id("item"), output_index=0,
                     content_index=0)
    rendered = [events.item_object(item, dialect=dialect) for item in items()]
    rendered.append(events.item_object(items()[0], dialect=dialect, status="in_progress", include_audio=True))
    response = events.response_object(
        response_id=ref.response_id, status="completed", dialect=dialect, output=rendered, voice="v",
        usage=events.usage_object(input_audio_tokens=10, output_audio_tokens=20, output_text_tokens=3),
        status_details=events.status_details("completed"), metadata={"k": "v"}, conversation_id="conv_1")
    out = [
        events.input_audio_cleared(),
        events.speech_started(audio_start_ms=120, item_id=ref.item_id),
        events.speech_stopped(audio_end_ms=900, item_id=ref.item_id),
        events.input_audio_committed(item_id=ref.item_id, previous_item_id=None),
        events.input_audio_committed(item_id=ref.item_id, previous_item_id="item_prev"),
        events.conversation_item_retrieved(rendered[-1]),
        events.conversation_item_truncated(item_id=ref.item_id, content_index=0, audio_end_ms=300),
        events.conversation_item_deleted(item_id=ref.item_id),
        events.transcription_delta(item_id=ref.item_id, content_index=0, delta="he"),
        events.transcription_completed(item_id=ref.item_id, content_index=0, transcript="hello",
                                       audio_seconds=1.5),
        events.transcription_failed(item_id=ref.item_id, content_index=0, code="asr_failed", message="no"),
        events.response_created(events.response_object(response_id=ref.response_id, status="in_progress",
                                                       dialect=dialect)),
        events.response_done(response),
        events.response_done(events.response_object(
            response_id=ref.response_id, status="cancelled", dialect=dialect, output_modality="text",
            output_format=AudioFormat.G711_ULAW, max_output_tokens=200,
            status_details=events.status_details("cancelled", reason="turn_detected"))),
        events.response_done(events.response_object(
            response_id=ref.response_id, status="failed", dialect=dialect,
            status_details=events.status_details("failed", error_code="engine_error", error_message="boom"))),
        events.content_part_added(ref, modality="audio"),
        events.content_part_done(ref, modality="audio", text="hello"),
        events.content_part_added(ref, modality="text"),
        events.content_part_done(ref, modality="text", text="hello"),
        events.output_audio_delta(ref, audio=PCM, dialect=dialect),
        events.output_audio_done(ref, dialect=dialect),
        events.output_audio_transcript_delta(ref, delta="hel", dialect=dialect),
        events.output_audio_transcript_done(ref, transcript="hello", dialect=dialect),
        events.output_text_delta(ref, delta="hel", dialect=dialect),
        events.output_text_done(ref, text="hello", dialect=dialect),
        events.function_call_arguments_delta(response_id=ref.response_id, item_id=ref.item_id, output_index=1,
                                             call_id="call_1", delta='{"ci'),
        events.function_call_arguments_done(response_id=ref.response_id, item_id=ref.item_id, output_index=1,
                                            call_id="call_1", name="get_weather", arguments='{"city": "x"}'),
        events.error_event(code="invalid_value", message="bad", param="session.type", client_event_id="c"),
        events.error_event(code=None, message="bad"),
        events.rate_limits_updated([("requests", 100, 99, 1.0), ("tokens", 1000, 900, 2.5)]),
    ]
    for item in rendered:
        out.append(events.output_item_added(response_id=ref.response_id, output_index=0, item=item))
        out.append(events.output_item_done(response_id=ref.response_id, output_index=0, item=item))
        out.append(events.conversation_item_added(item, previous_item_id=None, dialect=dialect))
        done = events.conversation_item_done(item, previous_item_id="item_0", dialect=dialect)
        if done is not None:
            out.append(done)
    return out


def test_every_ga_server_event_parses_with_the_sdk() -> None:
    produced = all_server_events("ga")
    for event in produced:
        check_ga(event)
    types = {e["type"] for e in produced}
    assert {"response.output_audio.delta", "response.output_text.done", "conversation.item.added",
            "conversation.item.done", "response.output_audio_transcript.done"} <= types


def test_every_beta_server_event_parses_with_the_sdk() -> None:
    produced = all_server_events("beta")
    for event in produced:
        # the beta model omits the function's name on .done, which GA clients read; beta ones ignore it
        named = event["type"] == "response.function_call_arguments.done"
        check_beta(event, allowed=("name",) if named else ())
    types = {e["type"] for e in produced}
    assert {"response.audio.delta", "response.audio.done", "response.audio_transcript.delta",
            "response.audio_transcript.done", "response.text.delta", "response.text.done",
            "conversation.item.created"} <= types
    assert not any(t.startswith(("response.output_audio", "response.output_text", "conversation.item.added",
                                 "conversation.item.done")) for t in types)


CONFIGS = [
    SessionConfig(),
    SessionConfig(instructions="Be kind.", output_modality="text", input_format=AudioFormat.G711_ULAW,
                  output_format=AudioFormat.G711_ALAW, turn_detection=None,
                  transcription=InputTranscription(model="whisper-1", language="zh"), voice="v2",
                  speed=1.1, tools=(FunctionTool(name="f", description="d", parameters={"type": "object"}),),
                  tool_choice="required", max_output_tokens=512, temperature=0.6),
    SessionConfig(turn_detection=TurnDetection(type="semantic_vad", eagerness="low"),
                  tool_choice=FunctionChoice("f")),
    SessionConfig(turn_detection=TurnDetection(idle_timeout_ms=5000)),
]


@pytest.mark.parametrize("config", CONFIGS)
def test_ga_session_events_parse_and_round_trip(config: SessionConfig) -> None:
    session = events.session_object(config, session_id=events.new_id("sess"), model="fun-audio-chat",
                                    dialect="ga")
    for event in (events.session_created(session), events.session_updated(session)):
        check_ga(event, allowed=("session.id", "session.object"))
    # the session object read back as a session.update gives the same settings (temperature aside:
    # GA sessions have none)
    update = decode({"type": "session.update", "session": session})
    assert update.dialect == "ga"
    assert SessionConfig(temperature=config.temperature).updated(update) == config


@pytest.mark.parametrize("config", CONFIGS[:2])
def test_beta_session_events_parse_and_round_trip(config: SessionConfig) -> None:
    session = events.session_object(config, session_id=events.new_id("sess"), model="fun-audio-chat",
                                    dialect="beta")
    assert session["model"] == "fun-audio-chat"
    for event in (events.session_created(session), events.session_updated(session)):
        # the beta models narrow `model` to OpenAI's names (the SDK parses events without
        # validating, so ours passes there) and leave out `object`, which the beta API sent
        check_beta({**event, "session": {k: v for k, v in session.items() if k != "model"}},
                   allowed=("session.object",))
    update = decode({"type": "session.update", "session": session})
    assert update.dialect == "beta" and SessionConfig().updated(update) == config


def test_transcription_session_object() -> None:
    session = events.session_object(SessionConfig(session_type="transcription"), session_id="sess_1",
                                    model="m", dialect="ga")
    check_ga(events.session_updated(session), allowed=("session.id", "session.object"))
    assert session["type"] == "transcription" and "output" not in session["audio"]


def test_dialect_names_and_content_types() -> None:
    ref = ContentRef(response_id="resp_1", item_id="item_1")
    ga = events.output_audio_delta(ref, audio=b"\x01\x02", dialect="ga")
    assert ga["type"] == "response.output_audio.delta"
    beta = events.output_audio_delta(ref, audio=b"\x01\x02", dialect="beta")
    assert beta["type"] == "response.audio.delta" and base64.b64decode(beta["delta"]) == b"\x01\x02"
    item = MessageItem(id="item_1", role="assistant", content=(OutputText("a"), OutputAudio("b")))
    assert [p["type"] for p in events.item_object(item, dialect="ga")["content"]] == ["output_text",
                                                                                      "output_audio"]
    assert [p["type"] for p in events.item_object(item, dialect="beta")["content"]] == ["text", "audio"]
    rendered = events.item_object(item, dialect="beta")
    assert events.conversation_item_done(rendered, previous_item_id=None, dialect="beta") is None
    assert events.conversation_item_added(rendered, previous_item_id=None,
                                          dialect="beta")["type"] == "conversation.item.created"
    with pytest.raises(ValueError, match="id"):
        events.item_object(MessageItem(role="user", content=()), dialect="ga")


def test_item_audio_only_on_request() -> None:
    item = MessageItem(id="item_1", role="user", content=(InputAudio(PCM, "t"),))
    assert "audio" not in events.item_object(item, dialect="ga")["content"][0]
    assert events.item_object(item, dialect="ga", include_audio=True)["content"][0]["audio"] == b64(PCM)


def test_ids_are_fresh_and_prefixed() -> None:
    ids = {events.new_id("event") for _ in range(1000)}
    assert len(ids) == 1000 and all(i.startswith("event_") and len(i) == 28 for i in ids)
    for kind in ("item", "resp", "call", "sess"):
        assert events.new_id(kind).startswith(kind + "_")
    assert events.input_audio_cleared()["event_id"] != events.input_audio_cleared()["event_id"]


def test_server_events_are_json() -> None:
    for dialect in ("ga", "beta"):
        for event in all_server_events(dialect):
            assert json.loads(json.dumps(event)) == event


# -- audio formats --

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = np.arange(256, dtype=np.uint8)


def test_g711_against_audioop() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # the reference; gone in Python 3.13
    linear = ALL_INT16.astype("<i2").tobytes()
    assert audio_formats.ulaw_encode(ALL_INT16).tobytes() == audioop.lin2ulaw(linear, 2)
    assert audio_formats.alaw_encode(ALL_INT16).tobytes() == audioop.lin2alaw(linear, 2)
    codes = ALL_CODES.tobytes()
    assert audio_formats.ulaw_decode(ALL_CODES).astype("<i2").tobytes() == audioop.ulaw2lin(codes, 2)
    assert audio_formats.alaw_decode(ALL_CODES).astype("<i2").tobytes() == audioop.alaw2lin(codes, 2)


def test_g711_tables_follow_the_standard() -> None:
    ulaw, alaw = audio_formats.ulaw_decode(ALL_CODES), audio_formats.alaw_decode(ALL_CODES)
    # G.711's end points and zeros: u-law 0x00/0x80 = -/+32124 and 0xFF/0x7F = +/-0;
    # A-law 0x2A/0xAA = -/+32256 and 0xD5/0x55 = +/-8
    assert (ulaw[0x00], ulaw[0x80], ulaw[0xFF], ulaw[0x7F]) == (-32124, 32124, 0, 0)
    assert (alaw[0x2A], alaw[0xAA], alaw[0xD5], alaw[0x55]) == (-32256, 32256, 8, -8)
    assert audio_formats.ulaw_encode(np.zeros(1, np.int16))[0] == 0xFF
    assert audio_formats.alaw_encode(np.zeros(1, np.int16))[0] == 0xD5
    # every code survives decode -> encode (u-law's negative zero encodes as positive zero)
    assert np.array_equal(audio_formats.alaw_encode(alaw), ALL_CODES)
    ulaw_back = audio_formats.ulaw_encode(ulaw)
    assert np.array_equal(np.delete(ulaw_back, 0x7F), np.delete(ALL_CODES, 0x7F)) and ulaw_back[0x7F] == 0xFF
    # quantisation: encode then decode is monotonic and within a segment step (<= 1/16 of |x| + 16)
    for encode, decode_ in ((audio_formats.ulaw_encode, audio_formats.ulaw_decode),
                            (audio_formats.alaw_encode, audio_formats.alaw_decode)):
        back = decode_(encode(ALL_INT16)).astype(np.int32)
        assert np.all(np.diff(back) >= 0)
        inner = np.abs(ALL_INT16.astype(np.int32)) < 32000
        err = np.abs(back - ALL_INT16.astype(np.int32))[inner]
        assert np.all(err <= np.abs(ALL_INT16.astype(np.int32))[inner] / 16 + 16)


def test_pcm16_round_trip() -> None:
    wire = ALL_INT16.astype("<i2").tobytes()
    pcm = audio_formats.decode_audio(wire, AudioFormat.PCM16)
    assert pcm.dtype == np.float32 and pcm.min() == -1.0 and pcm.max() < 1.0
    assert audio_formats.encode_audio(pcm, AudioFormat.PCM16) == wire  # exact for every sample
    tone = (0.5 * np.sin(np.linspace(0, 100, 24_000))).astype(np.float32)
    back = audio_formats.decode_audio(audio_formats.encode_audio(tone, AudioFormat.PCM16), AudioFormat.PCM16)
    assert np.max(np.abs(back - tone)) <= 0.5 / 32768 + 1e-7
    clipped = audio_formats.encode_audio(np.array([2.0, -2.0, np.nan], np.float32), AudioFormat.PCM16)
    assert np.frombuffer(clipped, "<i2").tolist() == [32767, -32768, 0]
    with pytest.raises(ValueError, match="even"):
        audio_formats.decode_audio(b"\x00", AudioFormat.PCM16)


@pytest.mark.parametrize("fmt", [AudioFormat.G711_ULAW, AudioFormat.G711_ALAW])
def test_g711_float_round_trip(fmt: AudioFormat) -> None:
    assert fmt.sample_rate == 8000 and fmt.bytes_per_sample == 1
    tone = (0.5 * np.sin(np.linspace(0, 100, 8000))).astype(np.float32)
    wire = audio_formats.encode_audio(tone, fmt)
    assert len(wire) == 8000
    back = audio_formats.decode_audio(wire, fmt)
    assert np.max(np.abs(back - tone)) < 0.02  # 8-bit companding: < 1/32 at half scale
    assert audio_formats.encode_audio(back, fmt) == wire  # decoded values are fixed points


def test_ga_format_objects() -> None:
    assert AudioFormat.PCM16.ga() == {"type": "audio/pcm", "rate": 24000}
    assert AudioFormat.G711_ULAW.ga() == {"type": "audio/pcmu"}
    assert AudioFormat.G711_ALAW.ga() == {"type": "audio/pcma"}
    assert AudioFormat.PCM16.sample_rate == 24000
