"""The Realtime API's client events and session settings as typed frozen dataclasses.

`protocol.decode_client_event` builds the events from JSON; `SessionConfig` is the effective
session that `events.session_object` renders. Both dialects share these types.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from enum import Enum
from typing import Any, Final, Literal, TypeAlias

from web_demo.server.errors import ProtocolError
from web_demo.server.realtime.audio_formats import AudioFormat

Dialect: TypeAlias = Literal["ga", "beta"]
Modality: TypeAlias = Literal["audio", "text"]
Role: TypeAlias = Literal["user", "system", "assistant"]
ToolMode: TypeAlias = Literal["auto", "none", "required"]
SessionType: TypeAlias = Literal["realtime", "transcription"]
MaxTokens: TypeAlias = int | Literal["inf"]
ErrorCode: TypeAlias = Literal[
    "invalid_json",  # not JSON, or not a JSON object
    "invalid_event",  # an object without a string `type`
    "unknown_event",  # a `type` this server does not serve
    "invalid_value",  # a missing field, a wrong JSON type or a value out of range
    "invalid_base64",
    "append_too_large",  # an input_audio_buffer.append over protocol.MAX_APPEND_B64_CHARS
    "unsupported_audio_format",  # anything but PCM16 24 kHz, G.711 u-law, G.711 A-law
    "unsupported_value",  # valid for OpenAI, not served here (MCP tools, images, ...)
]



class RealtimeProtocolError(ProtocolError):
    """A client event refused: answered with an `error` event, the connection stays up."""

    error_type = "invalid_request_error"

    def __init__(self, code: ErrorCode, message: str, *, param: str | None = None,
                 event_id: str | None = None) -> None:
        super().__init__(message, param=param)
        self.code: ErrorCode = code
        self.event_id = event_id  # the client's, when the event had one


class Off(Enum):
    """An explicit null in session.update: turn detection or transcription switched off."""

    OFF = "off"


OFF: Final = Off.OFF


@dataclass(frozen=True)
class TurnDetection:
    """Server VAD settings; a session.update replaces them whole (unset fields: defaults)."""

    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True
    idle_timeout_ms: int | None = None
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"  # semantic_vad only


@dataclass(frozen=True)
class InputTranscription:
    model: str | None = None
    language: str | None = None
    prompt: str | None = None


@dataclass(frozen=True)
class FunctionTool:
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)  # JSON Schema


@dataclass(frozen=True)
class FunctionChoice:
    """tool_choice naming one function."""

    name: str


ToolChoice: TypeAlias = ToolMode | FunctionChoice


@dataclass(frozen=True, kw_only=True)
class SessionUpdate:
    """session.update in either dialect; None: not given. `dialect` None: no field told."""

    event_id: str | None = None
    dialect: Dialect | None = None
    session_type: SessionType | None = None
    model: str | None = None
    instructions: str | None = None
    output_modality: Modality | None = None
    input_format: AudioFormat | None = None
    output_format: AudioFormat | None = None
    turn_detection: TurnDetection | Off | None = None
    transcription: InputTranscription | Off | None = None
    voice: str | None = None
    speed: float | None = None
    tools: tuple[FunctionTool, ...] | None = None
    tool_choice: ToolChoice | None = None
    max_output_tokens: MaxTokens | None = None
    temperature: float | None = None


@dataclass(frozen=True, kw_only=True)
class SessionConfig:
    """A session's effective settings, which session.created/updated report; the session owns it."""

    session_type: SessionType = "realtime"
    instructions: str = ""
    output_modality: Modality = "audio"
    input_format: AudioFormat = AudioFormat.PCM16
    output_format: AudioFormat = AudioFormat.PCM16
    turn_detection: TurnDetection | None = TurnDetection()  # None: push-to-talk (commit)
    transcription: InputTranscription | None = None
    voice: str = "default"
    speed: float = 1.0
    tools: tuple[FunctionTool, ...] = ()
    tool_choice: ToolChoice = "auto"
    max_output_tokens: MaxTokens = "inf"
    temperature: float = 0.8

    def updated(self, update: SessionUpdate) -> SessionConfig:
        """This config with the fields `update` gives replaced (OFF becomes None)."""
        mine = {f.name for f in fields(self)}
        changes: dict[str, Any] = {}
        for f in fields(update):
            value = getattr(update, f.name)
            if f.name in mine and value is not None:
                changes[f.name] = None if value is OFF else value
        return replace(self, **changes)


@dataclass(frozen=True, kw_only=True)
class InputAudioAppend:
    event_id: str | None = None
    audio: bytes  # in the session's input format, base64 already decoded


@dataclass(frozen=True, kw_only=True)
class InputAudioCommit:
    event_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class InputAudioClear:
    event_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class OutputAudioClear:
    """GA, WebRTC/SIP only: over a WebSocket the client owns playback, so a no-op."""

    event_id: str | None = None


@dataclass(frozen=True)
class InputText:
    text: str


@dataclass(frozen=True)
class InputAudio:
    audio: bytes  # in the session's input format
    transcript: str | None = None


@dataclass(frozen=True)
class OutputText:
    """Assistant text: "output_text" in GA, "text" in beta."""

    text: str


@dataclass(frozen=True)
class OutputAudio:
    """Assistant audio ("output_audio" / "audio"); history items carry only the transcript."""

    transcript: str | None = None
    audio: bytes | None = None


ContentPart: TypeAlias = InputText | InputAudio | OutputText | OutputAudio


@dataclass(frozen=True, kw_only=True)
class MessageItem:
    id: str | None = None
    role: Role
    content: tuple[ContentPart, ...]


@dataclass(frozen=True, kw_only=True)
class FunctionCallItem:
    id: str | None = None
    call_id: str | None = None
    name: str
    arguments: str  # JSON text, as the model wrote it


@dataclass(frozen=True, kw_only=True)
class FunctionCallOutputItem:
    id: str | None = None
    call_id: str
    output: str


ConversationItem: TypeAlias = MessageItem | FunctionCallItem | FunctionCallOutputItem


@dataclass(frozen=True, kw_only=True)
class ItemCreate:
    event_id: str | None = None
    previous_item_id: str | None = None  # "root": insert first; None: append
    item: ConversationItem


@dataclass(frozen=True, kw_only=True)
class ItemTruncate:
    event_id: str | None = None
    item_id: str
    content_index: int
    audio_end_ms: int


@dataclass(frozen=True, kw_only=True)
class ItemDelete:
    event_id: str | None = None
    item_id: str


@dataclass(frozen=True, kw_only=True)
class ItemRetrieve:
    event_id: str | None = None
    item_id: str


@dataclass(frozen=True, kw_only=True)
class ResponseCreate:
    """response.create; None: the session's setting."""

    event_id: str | None = None
    instructions: str | None = None
    output_modality: Modality | None = None
    conversation: Literal["auto", "none"] | None = None  # "none": out of band
    tools: tuple[FunctionTool, ...] | None = None
    tool_choice: ToolChoice | None = None
    max_output_tokens: MaxTokens | None = None
    temperature: float | None = None
    voice: str | None = None
    output_format: AudioFormat | None = None
    metadata: dict[str, str] | None = None


@dataclass(frozen=True, kw_only=True)
class ResponseCancel:
    event_id: str | None = None
    response_id: str | None = None  # None: the response in progress


RealtimeClientEvent: TypeAlias = (
    SessionUpdate | InputAudioAppend | InputAudioCommit | InputAudioClear | OutputAudioClear
    | ItemCreate | ItemTruncate | ItemDelete | ItemRetrieve | ResponseCreate | ResponseCancel)
