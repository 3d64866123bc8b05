"""Realtime transcription on the ASR server: /v1/realtime (?intent=transcription).

Data path: input_audio_buffer.append (PCM16 24 kHz or G.711 8 kHz) -> float32 24 kHz ->
the session's silero VAD (vad.VadTurnTracker) -> one segment per stretch of speech (from
just before its onset to its end; or whatever a commit finds in the buffer) -> 16 kHz -> the
selected model (the service's AsrModels) -> conversation.item.input_audio_transcription
.delta and .completed for that segment's item. Segments are transcribed concurrently, at
most MAX_IN_FLIGHT at once, so a slow one never stops the microphone from being heard.

Memory per connection is bounded: a segment holds at most `max_segment_s` of audio (longer
speech goes on in a new segment), the pre-roll window is short, at most MAX_IN_FLIGHT
segments wait for their transcripts (a segment beyond that gets a .failed event), and a send
blocked for `write_timeout_s` (a client that does not read) cuts the connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from utils.audio import MODEL_SAMPLE_RATE
from web_demo.server.engines.asr_models import AsrModels
from web_demo.server.engines.base import TranscriptionRequest
from web_demo.server.errors import ServingError
from web_demo.server.realtime import events as ev
from web_demo.server.realtime.appended_audio import AppendedAudio
from web_demo.server.realtime.messages import (
    OFF,
    InputAudioAppend,
    InputAudioClear,
    InputAudioCommit,
    InputTranscription,
    RealtimeClientEvent,
    RealtimeProtocolError,
    SessionConfig,
    SessionUpdate,
    TurnDetection,
)
from web_demo.server.realtime.protocol import decode_client_event
from web_demo.server.realtime.wire import RealtimeWire
from web_demo.server.vad import SileroVad, VadTurnTracker

logger = logging.getLogger(__name__)

MAX_IN_FLIGHT = 4  # segments being transcribed at once per connection
MIN_SEGMENT_S = 0.1


class RealtimeTranscription:
    """One transcription WebSocket: its settings, VAD, current segment and transcriptions."""

    def __init__(self, ws: web.WebSocketResponse, *, models: AsrModels, vad_model: SileroVad,
                 max_segment_s: float, idle_timeout_s: float, write_timeout_s: float,
                 transport: asyncio.Transport | None) -> None:
        self._ws = ws
        self._idle_timeout_s = idle_timeout_s
        self._write_timeout_s = write_timeout_s
        self._transport = transport  # aborted when the client stops reading
        self._cut = False
        self._models = models
        self._vad_model = vad_model
        self._max_samples = int(max_segment_s * MODEL_SAMPLE_RATE)
        self.config = SessionConfig(session_type="transcription",
                                    transcription=InputTranscription(model=models.default))
        self.dialect: Any = "ga"
        self._session_id = ev.new_id("sess")
        self._vad: VadTurnTracker | None = VadTurnTracker(vad_model, self._vad_settings())
        self._segment: list[np.ndarray] = []  # float32 16 kHz pieces of the segment being heard
        self._samples = 0
        self._item_id: str | None = None  # the segment's item, from its speech start
        self._last_item_id: str | None = None
        self._input = AppendedAudio()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._send_lock = asyncio.Lock()

    async def run(self) -> None:
        await self._send(ev.session_created(self._session_object()))
        try:
            await self._receive()
        finally:
            for task in self._in_flight:
                task.cancel()
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _receive(self) -> None:
        while True:
            try:
                msg = await self._ws.receive(timeout=self._idle_timeout_s)
            except TimeoutError:
                await self._send(ev.error_event(code="idle_timeout", error_type="invalid_request_error",
                                                message=f"no event for {self._idle_timeout_s:g} s; closing"))
                await self._ws.close()
                return
            # the events a cut client had already sent are not acted on: no answer reaches it
            if self._cut or msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED,
                                         WSMsgType.ERROR):
                return
            try:
                if msg.type is not WSMsgType.TEXT:
                    raise RealtimeProtocolError("invalid_json", "events are JSON text frames")
                await self._on_event(decode_client_event(msg.data, input_format=self.config.input_format))
            except ServingError as exc:  # a bad event, or one naming a model not served here
                await self._send(ev.error_event_for(exc))

    async def _on_event(self, event: RealtimeClientEvent) -> None:
        if isinstance(event, InputAudioAppend):
            await self._feed(self._input.convert(event.audio))
        elif isinstance(event, SessionUpdate):
            await self._update(event)
        elif isinstance(event, InputAudioCommit):
            await self._feed(self._input.flush())  # the segment ends here: all of its audio
            if self._samples < MIN_SEGMENT_S * MODEL_SAMPLE_RATE:
                raise RealtimeProtocolError("invalid_value", "the input audio buffer holds less than "
                                            "100 ms of audio", event_id=event.event_id)
            await self._end_segment()
        elif isinstance(event, InputAudioClear):
            self._segment, self._samples, self._item_id = [], 0, None
            await self._send(ev.input_audio_cleared())
        else:
            raise RealtimeProtocolError("unsupported_value", "a transcription session takes session.update "
                                        "and input_audio_buffer events only", event_id=event.event_id)

    async def _update(self, update: SessionUpdate) -> None:
        if update.session_type == "realtime":
            raise RealtimeProtocolError("unsupported_value", "this is the ASR server: conversations are "
                                        "served by the S2S server's /v1/realtime", param="session.type",
                                        event_id=update.event_id)
        transcription = update.transcription
        if isinstance(transcription, InputTranscription) and transcription.model is not None:
            self._models.resolve(transcription.model, param="session.audio.input.transcription.model")
        if update.dialect is not None:
            self.dialect = update.dialect
        self.config = self.config.updated(update)
        self._input.set_format(self.config.input_format)
        if update.turn_detection is OFF:
            self._vad = None
        elif isinstance(update.turn_detection, TurnDetection):
            self._vad = VadTurnTracker(self._vad_model, self._vad_settings())
        await self._send(ev.session_updated(self._session_object()))

    def _vad_settings(self) -> Any:
        detection = self.config.turn_detection
        return RealtimeWire.vad_settings(detection if detection is not None else TurnDetection())

    # ---- audio -> segments ------------------------------------------------------------------

    async def _feed(self, pcm_16k: np.ndarray) -> None:
        if self._vad is None:  # commits cut the segments
            self._record(pcm_16k)
            if self._samples >= self._max_samples:
                await self._end_segment()
            return
        for piece, event in self._vad.feed(pcm_16k):
            if self._vad.in_speech or event is not None:
                self._record(piece)
            if event is None:
                if self._samples >= self._max_samples:  # speech that long goes on in a new segment
                    await self._end_segment()
                continue
            ms = round(event.at_s * 1000)
            if event.preroll_16k is not None:
                self._segment, self._samples = [], 0
                self._record(event.preroll_16k)
                self._item_id = ev.new_id("item")
                await self._send(ev.speech_started(audio_start_ms=ms, item_id=self._item_id))
            else:
                item_id = self._item_id or ev.new_id("item")
                await self._send(ev.speech_stopped(audio_end_ms=ms, item_id=item_id))
                await self._end_segment()

    def _record(self, pcm_16k: np.ndarray) -> None:
        room = self._max_samples - self._samples
        if room > 0 and len(pcm_16k):
            self._segment.append(pcm_16k[:room])
            self._samples += min(room, len(pcm_16k))

    async def _end_segment(self) -> None:
        item_id = self._item_id or ev.new_id("item")
        pieces, self._segment, self._samples, self._item_id = self._segment, [], 0, None
        if not pieces:
            return
        if len(self._in_flight) >= MAX_IN_FLIGHT:
            await self._send(ev.transcription_failed(
                item_id=item_id, content_index=0, code="too_many_segments",
                message=f"more than {MAX_IN_FLIGHT} segments wait for transcripts; this one is dropped"))
            return
        previous, self._last_item_id = self._last_item_id, item_id
        await self._send(ev.input_audio_committed(item_id=item_id, previous_item_id=previous))
        task = asyncio.create_task(self._transcribe(item_id, np.concatenate(pieces)),
                                   name=f"transcribe-{item_id}")
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _transcribe(self, item_id: str, pcm_16k: np.ndarray) -> None:
        settings = self.config.transcription or InputTranscription()
        try:
            served = self._models.resolve(settings.model)
            result = await served.engine.transcribe(TranscriptionRequest(
                pcm_16k=pcm_16k, language=settings.language, prompt=settings.prompt or None))
        except ServingError as exc:
            logger.warning("realtime transcription of %s failed: %s", item_id, exc)
            await self._send(ev.transcription_failed(item_id=item_id, content_index=0, code=exc.kind,
                                                     message=exc.message))
            return
        await self._send(ev.transcription_delta(item_id=item_id, content_index=0, delta=result.text))
        await self._send(ev.transcription_completed(item_id=item_id, content_index=0, transcript=result.text,
                                                    audio_seconds=round(len(pcm_16k) / MODEL_SAMPLE_RATE, 3)))

    # ---- events -> socket -------------------------------------------------------------------

    def _session_object(self) -> dict[str, Any]:
        settings = self.config.transcription or InputTranscription()
        model = settings.model or self._models.default
        return ev.session_object(self.config, session_id=self._session_id, model=model, dialect=self.dialect)

    async def _send(self, event: ev.ServerEvent) -> None:
        """Sends one event; a client gone mid-send ends nothing but that send, and one whose
        send blocks for the write timeout is cut (a close frame would never reach it)."""
        async with self._send_lock:
            if self._cut:
                return
            try:
                async with asyncio.timeout(self._write_timeout_s):
                    await self._ws.send_str(json.dumps(event, ensure_ascii=False))
            except (ConnectionError, RuntimeError):
                pass
            except TimeoutError:
                self._cut = True
                logger.warning("realtime transcription session %s cut: client is not reading "
                               "(a send blocked %g s)", self._session_id, self._write_timeout_s)
                if self._transport is not None:
                    self._transport.abort()
