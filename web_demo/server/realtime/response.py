"""One Realtime API response as it streams: the events of its output items, in order.

A response's output is an assistant message (opened by its first text or audio, with one
content part: audio and its transcript, or text) and the function calls the model makes,
each its own item. `ResponseStream` turns a reply's pieces into those events and ends the
response (completed, cancelled or failed) with every item done. Pure: no I/O, no session.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soxr

from utils.audio import WIRE_SAMPLE_RATE
from web_demo.server.realtime import events as ev
from web_demo.server.realtime.audio_formats import AudioFormat, encode_audio
from web_demo.server.realtime.messages import (
    Dialect,
    FunctionCallItem,
    MessageItem,
    Modality,
    OutputAudio,
    OutputText,
)

Status = str  # "completed", "cancelled" or "failed"


@dataclass
class _Message:
    ref: ev.ContentRef
    transcript: list[str] = field(default_factory=list)


class ResponseStream:
    """The response being streamed; owned by the wire of its connection."""

    def __init__(self, *, dialect: Dialect, modality: Modality, output_format: AudioFormat, voice: str,
                 previous_item_id: str | None) -> None:
        self.id = ev.new_id("resp")
        self.last_item_id = previous_item_id  # the conversation's last item, this one's included
        self._dialect = dialect
        self._modality = modality
        self._format = output_format
        self._voice = voice
        self._message: _Message | None = None
        self._outputs: list[dict[str, Any] | None] = []  # in order; None: the message, still open
        self._resampler: Any = None  # soxr.ResampleStream 24 -> 8 kHz for G.711 output
        if output_format.sample_rate != WIRE_SAMPLE_RATE:
            self._resampler = soxr.ResampleStream(WIRE_SAMPLE_RATE, output_format.sample_rate, 1,
                                                  dtype="float32")

    def created(self) -> list[ev.ServerEvent]:
        return [ev.response_created(self._object("in_progress", []))]

    def text(self, text: str) -> list[ev.ServerEvent]:
        events, message = self._open_message()
        message.transcript.append(text)
        if self._modality == "text":
            return [*events, ev.output_text_delta(message.ref, delta=text, dialect=self._dialect)]
        return [*events, ev.output_audio_transcript_delta(message.ref, delta=text, dialect=self._dialect)]

    def audio(self, pcm_24k: np.ndarray) -> list[ev.ServerEvent]:
        """float32 [T] at 24 kHz, sent in the output format (nothing for a text response)."""
        if self._modality == "text":
            return []
        events, message = self._open_message()
        pcm = pcm_24k if self._resampler is None else self._resampler.resample_chunk(pcm_24k)
        audio = encode_audio(pcm, self._format)
        if audio:
            events.append(ev.output_audio_delta(message.ref, audio=audio, dialect=self._dialect))
        return events

    def tool_call(self, call_id: str, name: str, arguments: str) -> list[ev.ServerEvent]:
        """A function call item, whole: the model's arguments arrive at once."""
        index = len(self._outputs)
        item = FunctionCallItem(id=ev.new_id("item"), call_id=call_id, name=name, arguments=arguments)
        assert item.id is not None
        started = ev.item_object(FunctionCallItem(id=item.id, call_id=call_id, name=name, arguments=""),
                                 dialect=self._dialect, status="in_progress")
        finished = ev.item_object(item, dialect=self._dialect)
        events = [ev.output_item_added(response_id=self.id, output_index=index, item=started),
                  *self._added(started),
                  ev.function_call_arguments_delta(response_id=self.id, item_id=item.id, output_index=index,
                                                   call_id=call_id, delta=arguments),
                  ev.function_call_arguments_done(response_id=self.id, item_id=item.id, output_index=index,
                                                  call_id=call_id, name=name, arguments=arguments),
                  ev.output_item_done(response_id=self.id, output_index=index, item=finished)]
        self._outputs.append(finished)
        return events + self._item_done(finished)

    def close(self, status: Status, reason: ev.StatusReason | None = None) -> list[ev.ServerEvent]:
        """The response ends: its message finishes (incomplete unless completed), then response.done."""
        events = self._close_message(status)
        outputs = [self._message_object(status) if o is None else o for o in self._outputs]
        details = None
        if status == "cancelled":
            details = ev.status_details("cancelled", reason=reason)
        elif status == "failed":
            details = ev.status_details("failed")
        return [*events, ev.response_done(self._object(status, outputs, details))]

    # ---- the assistant message ------------------------------------------------------------

    def _open_message(self) -> tuple[list[ev.ServerEvent], _Message]:
        if self._message is not None:
            return [], self._message
        self._message = message = _Message(ev.ContentRef(response_id=self.id, item_id=ev.new_id("item"),
                                                         output_index=len(self._outputs)))
        self._outputs.append(None)
        item = self._message_object("in_progress")
        return [ev.output_item_added(response_id=self.id, output_index=message.ref.output_index, item=item),
                *self._added(item), ev.content_part_added(message.ref, modality=self._modality)], message

    def _close_message(self, status: Status) -> list[ev.ServerEvent]:
        message = self._message
        if message is None:
            return []
        ref, text, events = message.ref, "".join(message.transcript), []
        if self._modality == "audio":
            if self._resampler is not None and status == "completed":
                # the 24 -> 8 kHz stream holds back the reply's last ~20 ms: flush them out
                tail = encode_audio(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True),
                                    self._format)
                if tail:
                    events.append(ev.output_audio_delta(ref, audio=tail, dialect=self._dialect))
            events += [ev.output_audio_done(ref, dialect=self._dialect),
                       ev.output_audio_transcript_done(ref, transcript=text, dialect=self._dialect)]
        else:
            events.append(ev.output_text_done(ref, text=text, dialect=self._dialect))
        item = self._message_object(status)
        events += [ev.content_part_done(ref, modality=self._modality, text=text),
                   ev.output_item_done(response_id=self.id, output_index=ref.output_index, item=item)]
        return events + self._item_done(item)

    def _message_object(self, status: Status) -> dict[str, Any]:
        assert self._message is not None
        text = "".join(self._message.transcript)
        part = OutputAudio(transcript=text) if self._modality == "audio" else OutputText(text=text)
        item_status = "in_progress" if status == "in_progress" else (
            "completed" if status == "completed" else "incomplete")
        return ev.item_object(MessageItem(id=self._message.ref.item_id, role="assistant", content=(part,)),
                              dialect=self._dialect, status=item_status)  # type: ignore[arg-type]

    # ---- helpers ----------------------------------------------------------------------------

    def _added(self, item: dict[str, Any]) -> list[ev.ServerEvent]:
        previous, self.last_item_id = self.last_item_id, item["id"]
        return [ev.conversation_item_added(item, previous_item_id=previous, dialect=self._dialect)]

    def _item_done(self, item: dict[str, Any]) -> list[ev.ServerEvent]:
        done = ev.conversation_item_done(item, previous_item_id=None, dialect=self._dialect)
        return [] if done is None else [done]

    def _object(self, status: Any, outputs: list[dict[str, Any]],
                details: dict[str, Any] | None = None) -> dict[str, Any]:
        return ev.response_object(response_id=self.id, status=status, dialect=self._dialect, output=outputs,
                                  output_modality=self._modality, output_format=self._format,
                                  voice=self._voice, status_details=details)
