"""Realtime API server events: JSON-ready dicts in the client's dialect. Pure, no I/O.

Every builder returns a new dict with a fresh `event_id`; the session serialises it with
`json.dumps` and owns the ids of the items and responses it creates (`new_id`). GA and beta
differ in a few event and content-part names (`_BETA_NAMES`, the one table) and in the shape
of the session and response objects (`session_object`, `response_object`). Everything else is
the same in both dialects.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from web_demo.server.errors import ServingError
from web_demo.server.realtime.audio_formats import AudioFormat
from web_demo.server.realtime.messages import (
    ConversationItem,
    Dialect,
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionTool,
    InputAudio,
    InputText,
    InputTranscription,
    MaxTokens,
    Modality,
    OutputText,
    RealtimeProtocolError,
    SessionConfig,
    ToolChoice,
    TurnDetection,
)

ServerEvent: TypeAlias = dict[str, Any]
IdKind: TypeAlias = Literal["event", "item", "resp", "call", "sess"]
ItemStatus: TypeAlias = Literal["in_progress", "completed", "incomplete"]
ResponseStatus: TypeAlias = Literal["in_progress", "completed", "cancelled", "failed", "incomplete"]
StatusReason: TypeAlias = Literal["turn_detected", "client_cancelled", "max_output_tokens", "content_filter"]

# GA name -> beta name, for the events and item content types whose names differ.
# None: beta has no such event (it announced an item once, with conversation.item.created).
_BETA_NAMES: dict[str, str | None] = {
    "conversation.item.added": "conversation.item.created",
    "conversation.item.done": None,
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "output_audio": "audio",  # an assistant message's content part
    "output_text": "text",
}


def new_id(kind: IdKind) -> str:
    """A fresh id in OpenAI's style: "event_...", "item_...", "resp_...", "call_...", "sess_..."."""
    return f"{kind}_{secrets.token_hex(11)}"


def name_in(dialect: Dialect, ga_name: str) -> str | None:
    """The dialect's name for a GA event or content type; None: beta has no such event."""
    return ga_name if dialect == "ga" else _BETA_NAMES.get(ga_name, ga_name)


def _event(ga_type: str, dialect: Dialect = "ga", **fields: Any) -> ServerEvent:
    kind = name_in(dialect, ga_type)
    assert kind is not None, ga_type
    return {"event_id": new_id("event"), "type": kind, **fields}


@dataclass(frozen=True)
class ContentRef:
    """Where a streamed content part sits: response, item, output and content positions."""

    response_id: str
    item_id: str
    output_index: int = 0
    content_index: int = 0

    def fields(self) -> dict[str, Any]:
        return {"response_id": self.response_id, "item_id": self.item_id,
                "output_index": self.output_index, "content_index": self.content_index}


# -- objects inside events --

def item_object(item: ConversationItem, *, dialect: Dialect, status: ItemStatus = "completed",
                include_audio: bool = False) -> dict[str, Any]:
    """A conversation item as the API shows it; audio bytes only with `include_audio` (retrieve)."""
    if item.id is None:
        raise ValueError("give the item an id (new_id('item')) before it goes on the wire")
    head = {"id": item.id, "object": "realtime.item", "status": status}
    if isinstance(item, FunctionCallItem):
        return {**head, "type": "function_call", "call_id": item.call_id, "name": item.name,
                "arguments": item.arguments}
    if isinstance(item, FunctionCallOutputItem):
        return {**head, "type": "function_call_output", "call_id": item.call_id, "output": item.output}
    content = []
    for part in item.content:
        if isinstance(part, InputText):
            rendered: dict[str, Any] = {"type": "input_text", "text": part.text}
        elif isinstance(part, OutputText):
            rendered = {"type": name_in(dialect, "output_text"), "text": part.text}
        else:
            kind = "input_audio" if isinstance(part, InputAudio) else name_in(dialect, "output_audio")
            rendered = {"type": kind, "transcript": part.transcript}
            if include_audio and part.audio is not None:
                rendered["audio"] = base64.b64encode(part.audio).decode("ascii")
        content.append(rendered)
    return {**head, "type": "message", "role": item.role, "content": content}


def _turn_detection(td: TurnDetection | None, dialect: Dialect) -> dict[str, Any] | None:
    if td is None:
        return None
    common = {"type": td.type, "create_response": td.create_response,
              "interrupt_response": td.interrupt_response}
    if td.type == "semantic_vad":
        return {**common, "eagerness": td.eagerness}
    vad = {**common, "threshold": td.threshold, "prefix_padding_ms": td.prefix_padding_ms,
           "silence_duration_ms": td.silence_duration_ms}
    if td.idle_timeout_ms is not None and dialect == "ga":
        vad["idle_timeout_ms"] = td.idle_timeout_ms
    return vad


def _transcription(tr: InputTranscription | None) -> dict[str, Any] | None:
    return None if tr is None else {"model": tr.model, "language": tr.language, "prompt": tr.prompt}


def _tool(tool: FunctionTool) -> dict[str, Any]:
    return {"type": "function", "name": tool.name, "description": tool.description,
            "parameters": tool.parameters}


def _tool_choice(choice: ToolChoice) -> str | dict[str, Any]:
    return choice if isinstance(choice, str) else {"type": "function", "name": choice.name}


def _modalities(modality: Modality, dialect: Dialect) -> list[str]:
    # GA answers in one modality (audio carries its transcript); beta listed text with audio
    if dialect == "ga":
        return [modality]
    return ["text", "audio"] if modality == "audio" else ["text"]


def session_object(config: SessionConfig, *, session_id: str, model: str, dialect: Dialect) -> dict[str, Any]:
    """The `session` of session.created / session.updated, in the client's dialect."""
    turn_detection = _turn_detection(config.turn_detection, dialect)
    transcription = _transcription(config.transcription)
    if dialect == "beta":
        return {
            "id": session_id, "object": "realtime.session", "model": model,
            "modalities": _modalities(config.output_modality, dialect),
            "instructions": config.instructions, "voice": config.voice, "speed": config.speed,
            "input_audio_format": config.input_format.value,
            "output_audio_format": config.output_format.value,
            "input_audio_transcription": transcription, "turn_detection": turn_detection,
            "input_audio_noise_reduction": None,
            "tools": [_tool(t) for t in config.tools], "tool_choice": _tool_choice(config.tool_choice),
            "temperature": config.temperature,
            "max_response_output_tokens": config.max_output_tokens,
        }
    audio_input = {"format": config.input_format.ga(), "transcription": transcription,
                   "turn_detection": turn_detection, "noise_reduction": None}
    if config.session_type == "transcription":
        return {"type": "transcription", "object": "realtime.transcription_session", "id": session_id,
                "audio": {"input": audio_input}}
    return {
        "type": "realtime", "object": "realtime.session", "id": session_id, "model": model,
        "output_modalities": _modalities(config.output_modality, dialect),
        "instructions": config.instructions,
        "audio": {"input": audio_input,
                  "output": {"format": config.output_format.ga(), "voice": config.voice,
                             "speed": config.speed}},
        "tools": [_tool(t) for t in config.tools], "tool_choice": _tool_choice(config.tool_choice),
        "max_output_tokens": config.max_output_tokens,
    }


def status_details(kind: Literal["completed", "cancelled", "incomplete", "failed"], *,
                   reason: StatusReason | None = None, error_code: str | None = None,
                   error_message: str | None = None) -> dict[str, Any]:
    """A response's `status_details`: why it was cancelled, cut short or failed."""
    details: dict[str, Any] = {"type": kind, "reason": reason}
    if error_code is not None or error_message is not None:
        details["error"] = {"type": "server_error", "code": error_code, "message": error_message}
    return details


def usage_object(*, input_text_tokens: int = 0, input_audio_tokens: int = 0, output_text_tokens: int = 0,
                 output_audio_tokens: int = 0) -> dict[str, Any]:
    """A response's token `usage`."""
    inputs, outputs = input_text_tokens + input_audio_tokens, output_text_tokens + output_audio_tokens
    return {"total_tokens": inputs + outputs, "input_tokens": inputs, "output_tokens": outputs,
            "input_token_details": {"text_tokens": input_text_tokens, "audio_tokens": input_audio_tokens,
                                    "cached_tokens": 0},
            "output_token_details": {"text_tokens": output_text_tokens,
                                     "audio_tokens": output_audio_tokens}}


def response_object(*, response_id: str, status: ResponseStatus, dialect: Dialect,
                    output: Sequence[dict[str, Any]] = (), output_modality: Modality = "audio",
                    output_format: AudioFormat = AudioFormat.PCM16, voice: str | None = None,
                    max_output_tokens: MaxTokens = "inf", conversation_id: str | None = None,
                    status_details: dict[str, Any] | None = None, usage: dict[str, Any] | None = None,
                    metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """The `response` of response.created / response.done; `output` holds `item_object`s."""
    common = {"id": response_id, "object": "realtime.response", "status": status,
              "status_details": status_details, "output": list(output),
              "conversation_id": conversation_id, "max_output_tokens": max_output_tokens,
              "usage": usage, "metadata": metadata}
    if dialect == "beta":
        return {**common, "modalities": _modalities(output_modality, dialect),
                "output_audio_format": output_format.value, "voice": voice}
    return {**common, "output_modalities": _modalities(output_modality, dialect),
            "audio": {"output": {"format": output_format.ga(), "voice": voice}}}


# -- session and input audio buffer --

def session_created(session: dict[str, Any]) -> ServerEvent:
    return _event("session.created", session=session)


def session_updated(session: dict[str, Any]) -> ServerEvent:
    return _event("session.updated", session=session)


def speech_started(*, audio_start_ms: int, item_id: str) -> ServerEvent:
    return _event("input_audio_buffer.speech_started", audio_start_ms=audio_start_ms, item_id=item_id)


def speech_stopped(*, audio_end_ms: int, item_id: str) -> ServerEvent:
    return _event("input_audio_buffer.speech_stopped", audio_end_ms=audio_end_ms, item_id=item_id)


def input_audio_committed(*, item_id: str, previous_item_id: str | None) -> ServerEvent:
    return _event("input_audio_buffer.committed", previous_item_id=previous_item_id, item_id=item_id)


def input_audio_cleared() -> ServerEvent:
    return _event("input_audio_buffer.cleared")


# -- conversation --

def conversation_item_added(item: dict[str, Any], *, previous_item_id: str | None,
                            dialect: Dialect) -> ServerEvent:
    """GA conversation.item.added, beta conversation.item.created: an item joined the conversation."""
    return _event("conversation.item.added", dialect, previous_item_id=previous_item_id, item=item)


def conversation_item_done(item: dict[str, Any], *, previous_item_id: str | None,
                           dialect: Dialect) -> ServerEvent | None:
    """GA conversation.item.done (the item is final); None in beta, which has no such event."""
    if name_in(dialect, "conversation.item.done") is None:
        return None
    return _event("conversation.item.done", dialect, previous_item_id=previous_item_id, item=item)


def conversation_item_retrieved(item: dict[str, Any]) -> ServerEvent:
    return _event("conversation.item.retrieved", item=item)


def conversation_item_truncated(*, item_id: str, content_index: int, audio_end_ms: int) -> ServerEvent:
    return _event("conversation.item.truncated", item_id=item_id, content_index=content_index,
                  audio_end_ms=audio_end_ms)


def conversation_item_deleted(*, item_id: str) -> ServerEvent:
    return _event("conversation.item.deleted", item_id=item_id)


def transcription_delta(*, item_id: str, content_index: int, delta: str) -> ServerEvent:
    return _event("conversation.item.input_audio_transcription.delta", item_id=item_id,
                  content_index=content_index, delta=delta)


def transcription_completed(*, item_id: str, content_index: int, transcript: str,
                            audio_seconds: float) -> ServerEvent:
    """The user's audio transcribed; usage is billed by duration, as whisper-1's is."""
    return _event("conversation.item.input_audio_transcription.completed", item_id=item_id,
                  content_index=content_index, transcript=transcript,
                  usage={"type": "duration", "seconds": audio_seconds})


def transcription_failed(*, item_id: str, content_index: int, code: str, message: str) -> ServerEvent:
    return _event("conversation.item.input_audio_transcription.failed", item_id=item_id,
                  content_index=content_index,
                  error={"type": "transcription_error", "code": code, "message": message, "param": None})


# -- responses --

def response_created(response: dict[str, Any]) -> ServerEvent:
    return _event("response.created", response=response)


def response_done(response: dict[str, Any]) -> ServerEvent:
    return _event("response.done", response=response)


def output_item_added(*, response_id: str, output_index: int, item: dict[str, Any]) -> ServerEvent:
    return _event("response.output_item.added", response_id=response_id, output_index=output_index,
                  item=item)


def output_item_done(*, response_id: str, output_index: int, item: dict[str, Any]) -> ServerEvent:
    return _event("response.output_item.done", response_id=response_id, output_index=output_index,
                  item=item)


def _part(modality: Modality, text: str) -> dict[str, Any]:
    # both dialects' content_part events say "audio" / "text"
    return {"type": "audio", "transcript": text} if modality == "audio" else {"type": "text", "text": text}


def content_part_added(ref: ContentRef, *, modality: Modality) -> ServerEvent:
    return _event("response.content_part.added", **ref.fields(), part=_part(modality, ""))


def content_part_done(ref: ContentRef, *, modality: Modality, text: str) -> ServerEvent:
    """`text`: the part's whole transcript (audio) or text."""
    return _event("response.content_part.done", **ref.fields(), part=_part(modality, text))


def output_audio_delta(ref: ContentRef, *, audio: bytes, dialect: Dialect) -> ServerEvent:
    """`audio` in the session's output format; sent base64-encoded."""
    return _event("response.output_audio.delta", dialect, **ref.fields(),
                  delta=base64.b64encode(audio).decode("ascii"))


def output_audio_done(ref: ContentRef, *, dialect: Dialect) -> ServerEvent:
    return _event("response.output_audio.done", dialect, **ref.fields())


def output_audio_transcript_delta(ref: ContentRef, *, delta: str, dialect: Dialect) -> ServerEvent:
    return _event("response.output_audio_transcript.delta", dialect, **ref.fields(), delta=delta)


def output_audio_transcript_done(ref: ContentRef, *, transcript: str, dialect: Dialect) -> ServerEvent:
    return _event("response.output_audio_transcript.done", dialect, **ref.fields(), transcript=transcript)


def output_text_delta(ref: ContentRef, *, delta: str, dialect: Dialect) -> ServerEvent:
    return _event("response.output_text.delta", dialect, **ref.fields(), delta=delta)


def output_text_done(ref: ContentRef, *, text: str, dialect: Dialect) -> ServerEvent:
    return _event("response.output_text.done", dialect, **ref.fields(), text=text)


def function_call_arguments_delta(*, response_id: str, item_id: str, output_index: int, call_id: str,
                                  delta: str) -> ServerEvent:
    return _event("response.function_call_arguments.delta", response_id=response_id, item_id=item_id,
                  output_index=output_index, call_id=call_id, delta=delta)


def function_call_arguments_done(*, response_id: str, item_id: str, output_index: int, call_id: str,
                                 name: str, arguments: str) -> ServerEvent:
    return _event("response.function_call_arguments.done", response_id=response_id, item_id=item_id,
                  output_index=output_index, call_id=call_id, name=name, arguments=arguments)


# -- errors and limits --

def error_event(*, code: str | None, message: str, param: str | None = None,
                client_event_id: str | None = None, error_type: str = "invalid_request_error") -> ServerEvent:
    """`client_event_id`: the client event that caused it, when there was one."""
    return _event("error", error={"type": error_type, "code": code, "message": message, "param": param,
                                  "event_id": client_event_id})


def error_event_for(exc: ServingError, *, client_event_id: str | None = None) -> ServerEvent:
    """The error event for a refused client event or a failure while serving one."""
    if isinstance(exc, RealtimeProtocolError):
        return error_event(code=exc.code, message=exc.message, param=exc.param,
                           client_event_id=exc.event_id or client_event_id, error_type=exc.error_type)
    error_type = "invalid_request_error" if exc.http_status < 500 else "server_error"
    return error_event(code=exc.kind, message=exc.message, param=exc.param,
                       client_event_id=client_event_id, error_type=error_type)


RateLimit: TypeAlias = tuple[Literal["requests", "tokens"], int, int, float]


def rate_limits_updated(limits: Sequence[RateLimit]) -> ServerEvent:
    """`limits`: (name, limit, remaining, reset_seconds) each."""
    return _event("rate_limits.updated", rate_limits=[
        {"name": name, "limit": limit, "remaining": remaining, "reset_seconds": reset}
        for name, limit, remaining, reset in limits])
