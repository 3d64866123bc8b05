"""The OpenAI Realtime API spoken over a ChatSession (the same session core as /api/chat).

Client events -> session calls: input_audio_buffer.append (PCM16 24 kHz or G.711 8 kHz ->
float32 16 kHz) -> feed_audio(); server VAD (the session's silero VAD) or commit ends a user
turn, which becomes a user item; response.create (or server VAD's create_response) answers
the items not answered yet; response.cancel and speech during a response cut it.
Outbox items -> events: a reply is one response with one assistant message item whose
content part carries the audio (base64 in the output format) and its transcript (or only
text when the output modality is text); an interrupted reply ends with response.done
"cancelled". Events are named in the client's dialect (GA, or beta for the older shape).

State that the wire keeps per connection: the session settings, the ids of the items it
announced, the user input not answered yet and the response being streamed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from aiohttp import WSMsgType

from utils.audio import MODEL_SAMPLE_RATE, resample
from web_demo.server.engines.base import SamplingOptions, Tool, ToolResult
from web_demo.server.errors import ProtocolError
from web_demo.server.realtime import events as ev
from web_demo.server.realtime.appended_audio import AppendedAudio
from web_demo.server.realtime.audio_formats import decode_audio
from web_demo.server.realtime.messages import (
    OFF,
    Dialect,
    FunctionCallOutputItem,
    InputAudio,
    InputAudioAppend,
    InputAudioClear,
    InputAudioCommit,
    InputText,
    ItemCreate,
    ItemDelete,
    ItemTruncate,
    MessageItem,
    OutputAudioClear,
    RealtimeClientEvent,
    RealtimeProtocolError,
    ResponseCancel,
    ResponseCreate,
    SessionConfig,
    SessionUpdate,
    TurnDetection,
)
from web_demo.server.realtime.protocol import decode_client_event
from web_demo.server.realtime.response import ResponseStream
from web_demo.server.session import ChatSession, Frame, Outgoing, ReplyProgress
from web_demo.server.vad import VadSettings

logger = logging.getLogger(__name__)

PREROLL_RANGE_MS = (0, 1000)


@dataclass
class PendingInput:
    """User items not answered yet: the next response answers them together."""
    item_ids: list[str] = field(default_factory=list)
    audio_16k: list[np.ndarray] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    tool_results: list[ToolResult] = field(default_factory=list)  # function_call_output items


class RealtimeWire:
    """One /v1/realtime connection's settings and conversation ids; owned by its session."""

    pings = False  # WebSocket heartbeats keep the connection; the API has no ping event

    def __init__(self, *, model: str, dialect: Dialect = "ga") -> None:
        self.config = SessionConfig()
        self.dialect: Dialect = dialect  # beta clients say so in a header; GA otherwise
        self._model = model
        self._session_id = ev.new_id("sess")
        self._last_item_id: str | None = None
        self._speech_item_id: str | None = None  # the user item the VAD is hearing
        self._pending = PendingInput()
        self._answering: str | None = None  # the user item of the reply being generated
        self._response: ResponseStream | None = None
        self._requested = False  # a reply was asked for and its response is not open yet
        self._response_overrides: ResponseCreate | None = None
        self._temperature: float | None = None  # the client's session temperature, once it set one
        self._voice: str | None = None  # and its voice (config.voice reports "default" before)
        self._input = AppendedAudio()
        # Why the next interruption cuts the response (its response.done status_details.reason):
        # the VAD heard speech ("turn_detected", OpenAI's reason for a barge-in) unless the
        # client sent response.cancel.
        self._cut_reason: ev.StatusReason = "client_cancelled"

    @staticmethod
    def vad_settings(detection: TurnDetection) -> VadSettings:
        """Our VAD's settings for the API's server_vad ones, clamped into our limits."""
        settings = VadSettings().updated({"vad_threshold": detection.threshold,
                                          "vad_silence_ms": detection.silence_duration_ms})
        preroll = min(max(detection.prefix_padding_ms, PREROLL_RANGE_MS[0]), PREROLL_RANGE_MS[1])
        return replace(settings, preroll_ms=preroll)

    def initial_vad(self) -> VadSettings | None:
        detection = self.config.turn_detection
        return None if detection is None else self.vad_settings(detection)

    def opening(self, session: ChatSession) -> list[Outgoing]:
        return [self._out(ev.session_created(self._session_object()))]

    # ---- client events -> session ---------------------------------------------------------

    async def receive(self, session: ChatSession) -> None:
        async with contextlib.aclosing(session.frames()) as frames:
            async for msg in frames:
                try:
                    if msg.type is not WSMsgType.TEXT:
                        raise RealtimeProtocolError("invalid_json", "events are JSON text frames")
                    event = decode_client_event(msg.data, input_format=self.config.input_format)
                    await self._on_event(session, event)
                except RealtimeProtocolError as exc:
                    session.bad_frame(exc, self._frame(ev.error_event_for(exc)))
                except ProtocolError as exc:  # the session's own limits
                    session.bad_frame(exc, self._frame(ev.error_event_for(exc)))

    async def _on_event(self, session: ChatSession, event: RealtimeClientEvent) -> None:
        if isinstance(event, InputAudioAppend):
            await session.feed_audio(self._input.convert(event.audio))
        elif isinstance(event, SessionUpdate):
            self._update_session(session, event)
        elif isinstance(event, InputAudioCommit):
            await self._commit(session, event)
        elif isinstance(event, InputAudioClear):
            session.take_turn_audio()
            self._speech_item_id = None
            session.emit(self._out(ev.input_audio_cleared()))
        elif isinstance(event, ItemCreate):
            self._create_item(session, event)
        elif isinstance(event, ResponseCreate):
            await self._create_response(session, event)
        elif isinstance(event, ResponseCancel):
            await self._cancel_response(session, event)
        elif isinstance(event, ItemTruncate):
            # What reached the client is all the history keeps already; the played part of
            # that is the client's business.
            session.emit(self._out(ev.conversation_item_truncated(
                item_id=event.item_id, content_index=event.content_index, audio_end_ms=event.audio_end_ms)))
        elif isinstance(event, ItemDelete):
            self._delete_item(session, event)
        elif isinstance(event, OutputAudioClear):
            pass  # WebRTC only: over a WebSocket the client owns its playback buffer
        else:
            raise RealtimeProtocolError("unsupported_value", f"{type(event).__name__} is not served here",
                                        event_id=event.event_id)

    def _update_session(self, session: ChatSession, update: SessionUpdate) -> None:
        if update.session_type == "transcription":
            raise RealtimeProtocolError(
                "unsupported_value", "transcription sessions are served by the ASR server's "
                "/v1/realtime?intent=transcription", param="session.type", event_id=update.event_id)
        if update.dialect is not None:
            self.dialect = update.dialect
        self.config = self.config.updated(update)
        self._input.set_format(self.config.input_format)
        if update.instructions is not None:
            session.system_prompt = update.instructions or session.cfg.default_system_prompt or None
        if update.temperature is not None:
            self._temperature = update.temperature
        if update.voice is not None:
            self._voice = update.voice
        if update.turn_detection is OFF:
            session.set_vad(False, session.vad_settings)
            session.recording = True  # the input buffer fills until the client commits
        elif isinstance(update.turn_detection, TurnDetection):
            session.set_vad(True, self.vad_settings(update.turn_detection))
            session.barge_in = update.turn_detection.interrupt_response
        session.emit(self._out(ev.session_updated(self._session_object())))

    async def _commit(self, session: ChatSession, event: InputAudioCommit) -> None:
        await session.feed_audio(self._input.flush())  # the turn ends here: all of its audio
        pcm_16k = session.take_turn_audio()
        if pcm_16k is None or len(pcm_16k) < MODEL_SAMPLE_RATE // 10:
            raise RealtimeProtocolError(
                "invalid_value", "the input audio buffer holds less than 100 ms of audio",
                event_id=event.event_id)
        await self.turn_ended(session, pcm_16k)

    async def turn_ended(self, session: ChatSession, pcm_16k: np.ndarray) -> None:
        """The VAD heard the end of speech or the client committed: a new user item, and a
        response when server VAD says so."""
        item_id = self._speech_item_id or ev.new_id("item")
        self._speech_item_id = None
        if not session.vad_on:
            session.recording = True  # push-to-talk: the buffer fills again at once
        committed = ev.input_audio_committed(item_id=item_id, previous_item_id=self._last_item_id)
        session.emit(self._out(committed))
        self._announce_item(session, MessageItem(id=item_id, role="user", content=(InputAudio(audio=b""),)))
        self._pending.item_ids.append(item_id)
        self._pending.audio_16k.append(pcm_16k)
        detection = self.config.turn_detection
        if detection is not None and detection.create_response:
            await self._answer(session, None)

    def _announce_item(self, session: ChatSession, item: MessageItem | FunctionCallOutputItem) -> None:
        obj = ev.item_object(item, dialect=self.dialect)
        previous, self._last_item_id = self._last_item_id, item.id
        added = ev.conversation_item_added(obj, previous_item_id=previous, dialect=self.dialect)
        session.emit(self._out(added))
        done = ev.conversation_item_done(obj, previous_item_id=previous, dialect=self.dialect)
        if done is not None:
            session.emit(self._out(done))

    def _create_item(self, session: ChatSession, event: ItemCreate) -> None:
        item = event.item
        if isinstance(item, FunctionCallOutputItem):
            item = replace(item, id=item.id or ev.new_id("item"))
            assert item.id is not None
            self._pending.tool_results.append(ToolResult(item.call_id, item.output))
            self._pending.item_ids.append(item.id)
            self._announce_item(session, item)
            return
        if not isinstance(item, MessageItem) or item.role != "user":
            raise RealtimeProtocolError(
                "unsupported_value", "only user messages and function_call_output items can be added "
                "to the conversation here (the engines keep their own history)",
                param="item", event_id=event.event_id)
        item = replace(item, id=item.id or ev.new_id("item"))
        assert item.id is not None
        for part in item.content:
            if isinstance(part, InputText):
                self._pending.texts.append(part.text)
            elif isinstance(part, InputAudio):
                pcm = decode_audio(part.audio, self.config.input_format)
                self._pending.audio_16k.append(resample(pcm, self.config.input_format.sample_rate,
                                                        MODEL_SAMPLE_RATE))
        self._pending.item_ids.append(item.id)
        self._announce_item(session, item)

    def _delete_item(self, session: ChatSession, event: ItemDelete) -> None:
        if event.item_id not in self._pending.item_ids:
            raise RealtimeProtocolError(
                "invalid_value", f"item {event.item_id!r:.40} is not an unanswered user item; answered "
                "items are in the model's history and cannot be deleted", param="item_id",
                event_id=event.event_id)
        self._pending = PendingInput()  # the engines take a turn whole: drop what it would have been
        session.emit(self._out(ev.conversation_item_deleted(item_id=event.item_id)))

    async def _create_response(self, session: ChatSession, event: ResponseCreate) -> None:
        if not self._pending.item_ids:
            raise RealtimeProtocolError("invalid_value", "no new user input to respond to: commit the "
                                        "input audio buffer or create a user item first",
                                        event_id=event.event_id)
        await self._answer(session, event)

    async def _answer(self, session: ChatSession, overrides: ResponseCreate | None) -> None:
        """Answers the pending user input: its audio, or its text when there is no audio."""
        pending, self._pending = self._pending, PendingInput()
        self._response_overrides, self._requested = overrides, True
        self._answering = pending.item_ids[-1]
        offered = _overridden(overrides, "tools", self.config.tools)
        tools = () if self._tool_choice(overrides) == "none" else tuple(
            Tool(t.name, t.description, t.parameters) for t in offered)
        # temperature, max tokens and voice stay None (the engine's own) until the client sets one
        sampling = SamplingOptions(text_temperature=_overridden(overrides, "temperature", self._temperature),
                                   max_text_tokens=self._max_tokens(overrides))
        answer = functools.partial(
            session.answer, system_prompt=_overridden(overrides, "instructions", None), tools=tools,
            sampling=sampling, voice=_overridden(overrides, "voice", self._voice), speed=self.config.speed)
        if pending.tool_results:
            await answer(None, tool_results=tuple(pending.tool_results))
        elif pending.audio_16k:
            await answer(np.concatenate(pending.audio_16k))
        else:
            await answer(None, text="\n".join(pending.texts))

    def _max_tokens(self, overrides: ResponseCreate | None) -> int | None:
        limit = _overridden(overrides, "max_output_tokens", self.config.max_output_tokens)
        return None if limit == "inf" else limit

    def _tool_choice(self, overrides: ResponseCreate | None) -> Any:
        return _overridden(overrides, "tool_choice", self.config.tool_choice)

    async def _cancel_response(self, session: ChatSession, event: ResponseCancel) -> None:
        # A reply asked for but not announced yet (response.created still queued) is in progress too.
        response = self._response
        known = response is not None and event.response_id in (None, response.id)
        if not (known or (session.reply_running and event.response_id is None)):
            raise RealtimeProtocolError("invalid_value", "no response in progress to cancel",
                                        param="response_id", event_id=event.event_id)
        self._cut_reason = "client_cancelled"
        await session.interrupt()

    # ---- outbox items -> events -------------------------------------------------------------

    def accept_event(self, data: dict[str, Any]) -> dict[str, Any] | None:
        kind, what = data.get("type"), data.get("event")
        if kind == "vad" and what == "speech_started":
            self._speech_item_id = ev.new_id("item")
            self._cut_reason = "turn_detected"  # the session interrupts the reply right after
            return {**data, "item_id": self._speech_item_id}
        if kind == "vad" and what == "speech_stopped":
            self._cut_reason = "client_cancelled"  # unused if no reply was running at the onset
            return {**data, "item_id": self._speech_item_id or ev.new_id("item")}
        if kind == "transcript" and self._answering is not None:
            return {**data, "item_id": self._answering}
        if kind == "interrupted":
            reason, self._cut_reason = self._cut_reason, "client_cancelled"
            return {**data, "reason": reason}
        if kind == "tool_call":
            return data
        return None

    def close(self) -> None:
        return None  # all its state is the session's

    async def render(self, item: Outgoing, progress: ReplyProgress | None) -> list[Frame]:
        kind, response = item.kind, self._response
        if kind == "frame" and item.frame is not None:
            return [item.frame]
        if kind == "reply_started":
            return self._frames(self._open_response())
        if kind == "text" and item.text is not None and response is not None:
            return self._frames(response.text(item.text))
        if kind == "audio" and item.pcm_24k is not None and response is not None:
            return self._frames(response.audio(item.pcm_24k))
        if kind == "reply_ended":
            failed = progress is not None and progress.failed
            return self._frames(self._close_response("failed" if failed else "completed"))
        if kind == "error" and item.text is not None:
            return [self._frame(ev.error_event(code="server_error", message=item.text,
                                               error_type="server_error"))]
        if kind == "event" and item.data is not None:
            return self._frames(self._event(item.data))
        return []

    def _event(self, data: dict[str, Any]) -> list[ev.ServerEvent]:
        kind, what = data.get("type"), data.get("event")
        if kind == "vad" and what == "speech_started":
            return [ev.speech_started(audio_start_ms=round(data["at_s"] * 1000), item_id=data["item_id"])]
        if kind == "vad" and what == "speech_stopped":
            return [ev.speech_stopped(audio_end_ms=round(data["at_s"] * 1000), item_id=data["item_id"])]
        if kind == "transcript":
            return [ev.transcription_completed(item_id=data["item_id"], content_index=0,
                                               transcript=data["text"], audio_seconds=0.0)]
        if kind == "tool_call" and self._response is not None:
            return self._response.tool_call(data["call_id"], data["name"], data["arguments"])
        if kind == "interrupted" and (self._response is not None or self._requested):
            # cut before its first item went out: the client still sees it begin and end
            opened = self._open_response() if self._response is None else []
            return opened + self._close_response("cancelled", data.get("reason", "client_cancelled"))
        return []

    def _open_response(self) -> list[ev.ServerEvent]:
        overrides = self._response_overrides
        modality = _overridden(overrides, "output_modality", self.config.output_modality)
        self._requested = False
        self._response = ResponseStream(dialect=self.dialect, modality=modality,
                                        voice=_overridden(overrides, "voice", self.config.voice),
                                        output_format=self.config.output_format,
                                        previous_item_id=self._last_item_id)
        return self._response.created()

    def _close_response(self, status: str, reason: ev.StatusReason | None = None) -> list[ev.ServerEvent]:
        response, self._response = self._response, None
        if response is None:
            return []
        events = response.close(status, reason)
        self._last_item_id = response.last_item_id
        return events

    def _session_object(self) -> dict[str, Any]:
        return ev.session_object(self.config, session_id=self._session_id, model=self._model,
                                 dialect=self.dialect)

    @staticmethod
    def _frame(event: ev.ServerEvent) -> str:
        return json.dumps(event, ensure_ascii=False)

    def _frames(self, events: list[ev.ServerEvent]) -> list[Frame]:
        return [self._frame(e) for e in events]

    def _out(self, event: ev.ServerEvent) -> Outgoing:
        return Outgoing("frame", frame=self._frame(event))


def _overridden(overrides: ResponseCreate | None, name: str, session_value: Any) -> Any:
    """The value one response.create gives `name` for its response, else the session's."""
    value = getattr(overrides, name, None)
    return session_value if value is None else value
