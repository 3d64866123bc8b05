"""ChatSession: everything one /api/chat WebSocket owns.

Data path, in the order bytes flow:
  receive loop: 0x01 Ogg pages -> OpusStreamDecoder -> PCM 24 kHz -> turn buffer
  end of turn:  PCM 24 kHz -> 16 kHz -> ReplyRequest -> reply task
  reply task:   conversation.reply() events -> paced (real time + send_ahead) -> outbox
  write loop:   outbox -> OpusStreamEncoder (audio) -> ws.send_bytes; pings in silences

The receive loop, the write loop and the reply tasks run in one task group: a crash in any
of them closes the socket with 1011 and a 0x05 frame instead of leaving a silent socket.
Barge-in (a `start` while a reply runs) bumps the reply epoch, so the write loop drops
every queued item of older epochs, and cancels the reply task and waits for it, so the
engine has stopped generating and vocoding before the next client frame is read. The
conversation is told how much of the reply reached the client; only that stays in history.

Memory per connection is bounded: the outbox holds at most --max-outbox-frames items and a
send blocked for --write-timeout seconds means the client is not reading; either way the
connection is aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web

from utils.audio import MODEL_SAMPLE_RATE, WIRE_SAMPLE_RATE, resample, write_wav_atomic
from utils.opus import OpusStreamDecoder, OpusStreamEncoder
from web_demo.server import protocol
from web_demo.server.config import ChatConfig
from web_demo.server.engines.base import (
    AudioDelta,
    QueuePosition,
    ReplyRequest,
    S2SConversation,
    S2SEngine,
    SamplingOptions,
    TextDelta,
    UserTranscript,
)
from web_demo.server.errors import EngineDead, ProtocolError, ServingError
from web_demo.server.lifecycle import Lifecycle
from web_demo.server.metrics import Metrics
from web_demo.server.protocol import AudioIn, Control, ControlIn, Ignored, MetadataIn
from web_demo.server.vad import VAD_KEYS, SileroVad, VadEvent, VadSettings, VadTurnTracker, requested_vad

logger = logging.getLogger(__name__)

PROCESSING_TEXT = "[Processing...]"  # upstream's status frame; old clients display it
PACE_SAMPLES_24K = 960  # reply audio leaves in 40 ms units, one Opus frame each
LOGGED_BAD_FRAMES = 3  # per session; the rest are counted in the close line


@dataclass
class ReplyProgress:
    """What one reply has produced and, separately, what has actually reached the client."""
    request: ReplyRequest
    epoch: int
    turn_ended_at: float  # loop time of the endTurn/pause that triggered the reply
    produced_text: list[str] = field(default_factory=list)
    sent_text: list[str] = field(default_factory=list)
    sent_audio_24k: list[np.ndarray] = field(default_factory=list)  # only with save_audio
    first_audio_at: float | None = None
    first_text_at: float | None = None
    failed: bool = False
    finished: bool = False


@dataclass(frozen=True)
class Outgoing:
    """One outbox item. `epoch` None means session-level (errors, metadata, pings)."""
    frame: bytes | None = None  # a ready frame
    pcm_24k: np.ndarray | None = None  # audio still to encode
    epoch: int | None = None
    text: str | None = None  # the text a 0x02 frame carries, for history
    end_of_reply: bool = False  # flush the encoder, report latency, commit history
    close_code: int | None = None  # close the socket after sending this item's frame


class PlaybackClock:
    """Models the client's playback buffer so reply audio leaves at real-time pace."""

    def __init__(self, send_ahead_s: float) -> None:
        self._send_ahead_s = send_ahead_s
        self._buffer_end = 0.0  # loop time at which everything admitted so far has played

    async def admit(self, seconds: float) -> None:
        loop_time = asyncio.get_running_loop().time()
        self._buffer_end = max(self._buffer_end, loop_time)
        wait = self._buffer_end - loop_time - self._send_ahead_s
        if wait > 0:
            await asyncio.sleep(wait)
        self._buffer_end += seconds


class ChatSession:
    """One WebSocket conversation; created and run by the /api/chat handler."""

    def __init__(self, ws: web.WebSocketResponse, *, engine: S2SEngine, cfg: ChatConfig,
                 lifecycle: Lifecycle, metrics: Metrics, transport: asyncio.Transport | None,
                 extras: bool = False, sampling: SamplingOptions | None = None,
                 vad: VadSettings | None = None, vad_model: SileroVad | None = None,
                 session_id: str | None = None) -> None:
        self.id = session_id or uuid.uuid4().hex[:12]
        self._ws = ws
        self._transport = transport  # aborted when the client stops reading
        self._engine = engine
        self._cfg = cfg
        self._lifecycle = lifecycle
        self._metrics = metrics
        self._extras = extras  # opt-in 0x04 frames that old clients do not know
        self._sampling = sampling  # the client's own sampling settings, for every turn
        self._decoder = OpusStreamDecoder()
        self._encoder = OpusStreamEncoder()
        self._outbox: asyncio.Queue[Outgoing] = asyncio.Queue(cfg.max_outbox_frames)
        # From the handshake on, as upstream's client expects; with VAD, from speech onset.
        self._recording = vad is None
        self._vad_settings = vad or cfg.vad
        self._vad_model = vad_model or SileroVad()  # the route's, shared by its sessions
        self._vad = None if vad is None else VadTurnTracker(self._vad_model, vad)
        self._turn_chunks_24k: list[np.ndarray] = []
        self._turn_samples = 0
        self._turn_overflowed = False
        self._system_prompt = cfg.default_system_prompt or None  # None: the engine's own
        self._turn_index = 0
        self._epoch = 0
        self._progress: ReplyProgress | None = None
        self._reply_task: asyncio.Task[None] | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._conversation: S2SConversation | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._tick_s = min(cfg.ping_interval_s, cfg.write_timeout_s) / 4
        self._last_sent = 0.0  # loop time of the last frame sent
        self._send_started: float | None = None  # loop time the send in progress began
        self._bad_frames = 0
        self._aborted: str | None = None  # why the connection was cut, if it was

    # ---- lifetime -------------------------------------------------------------------

    async def run(self) -> None:
        """Serves the connection until the client leaves; always cleans up."""
        self._conversation = self._engine.open_session(self.id, history_turns=self._cfg.history_turns)
        self._emit(Outgoing(frame=protocol.HANDSHAKE_FRAME))
        if self._vad is not None:
            self._emit_vad_settings()
        self._last_sent = asyncio.get_running_loop().time()
        self._tick()
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                writer = tasks.create_task(self._write_loop(), name=f"ws-writer-{self.id}")
                await self._receive_loop()
                await self._interrupt_reply()  # the client is gone: stop its reply
                writer.cancel()
        except* Exception as failure:
            logger.error("session %s crashed", self.id, exc_info=failure.exceptions[0])
            await self._close_after_crash()
        finally:
            await self._aclose()

    async def _aclose(self) -> None:
        await self._interrupt_reply()
        if self._ticker is not None:
            self._ticker.cancel()
        if self._conversation is not None:
            await self._conversation.aclose()
        if self._bad_frames > LOGGED_BAD_FRAMES:
            logger.info("session %s: %d bad frames in all", self.id, self._bad_frames)
        if self._aborted:
            logger.warning("session %s aborted: %s", self.id, self._aborted)

    async def _close_after_crash(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._ws.send_bytes(protocol.encode_error("internal server error; reconnect"))
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"internal error")

    def _abort(self, reason: str) -> None:
        """Cuts a client that does not read: a close frame would never reach it either."""
        if self._aborted is None:
            self._aborted = reason
            if self._transport is not None:
                self._transport.abort()

    # ---- receive: bytes -> PCM -> turn ------------------------------------------------

    async def _receive_loop(self) -> None:
        async for msg in self._ws:
            try:
                if msg.type is WSMsgType.BINARY:
                    await self._on_message(protocol.decode_binary(msg.data))
                elif msg.type is WSMsgType.TEXT:
                    await self._on_message(protocol.decode_text(msg.data))
                elif msg.type is WSMsgType.ERROR:
                    logger.info("session %s: socket error %s", self.id, self._ws.exception())
                    return
            except ProtocolError as exc:
                self._bad_frame(exc)

    def _bad_frame(self, exc: ProtocolError) -> None:
        self._bad_frames += 1
        if self._bad_frames <= LOGGED_BAD_FRAMES:
            logger.info("session %s: bad frame: %s", self.id, exc)
        self._metrics.errors.labels(exc.kind).inc()
        self._send_error(f"bad frame: {exc}")

    async def _on_message(self, message: protocol.ClientMessage) -> None:
        if isinstance(message, AudioIn):
            await self._on_audio(message.ogg)
        elif isinstance(message, ControlIn):
            await self._on_control(message.action)
        elif isinstance(message, MetadataIn):
            self._on_metadata(message.data)
        elif isinstance(message, Ignored):
            logger.debug("session %s: ignored %s frame", self.id, message.kind.name)

    async def _on_audio(self, ogg: bytes) -> None:
        # Decode even while not recording: the decoder is continuous for the connection.
        try:
            pcm_24k = self._decoder.decode(ogg)
        except ValueError as exc:
            raise ProtocolError(f"audio could not be decoded ({exc}); the frame was dropped") from None
        if self._vad is None:
            if self._recording:
                self._record(pcm_24k)
            return
        # Hands-free: the VAD hears everything; pieces of <= 40 ms, so events land in time.
        for piece, event in self._vad.feed(pcm_24k):
            if self._recording:
                self._record(piece)
            if event is not None:
                await self._on_vad(event)

    async def _on_vad(self, event: VadEvent) -> None:
        """Speech started: barge-in as a `start` does, and the turn begins with the pre-roll
        (unless a `start` already began one). Speech stopped: the turn ends as `pause` does."""
        self._emit_extra({"type": "vad", "event": event.kind, "at_s": round(event.at_s, 3)})
        logger.info("session %s: VAD %s at %.2f s", self.id, event.kind, event.at_s)
        if event.preroll_24k is not None:
            await self._interrupt_reply()
            if not self._recording:
                self._start_recording()
                self._record(event.preroll_24k)
        elif self._recording:
            self._recording = False
            await self._end_turn()

    def _record(self, pcm_24k: np.ndarray) -> None:
        if len(pcm_24k) == 0:
            return
        room = int(self._cfg.max_turn_s * WIRE_SAMPLE_RATE) - self._turn_samples
        if len(pcm_24k) > room:
            pcm_24k = pcm_24k[:max(room, 0)]
            if not self._turn_overflowed:
                self._turn_overflowed = True
                self._send_error(f"turn longer than {self._cfg.max_turn_s:g} s: "
                                 "the rest of this turn is dropped; end the turn to get a reply")
        self._turn_chunks_24k.append(pcm_24k)
        self._turn_samples += len(pcm_24k)

    async def _on_control(self, action: Control) -> None:
        logger.info("session %s: control %s", self.id, action.name)
        if action is Control.START:
            await self._interrupt_reply()
            self._start_recording()
        elif action in (Control.PAUSE, Control.END_TURN):
            if self._recording:
                self._recording = False
                await self._end_turn()
        elif action is Control.RESTART:
            await self._interrupt_reply()
            assert self._conversation is not None
            self._conversation.reset()
            self._start_recording()

    def _on_metadata(self, data: dict[str, Any]) -> None:
        if "system_prompt" in data:
            prompt = data["system_prompt"]
            if not isinstance(prompt, str):
                raise ProtocolError("system_prompt must be a string")
            if len(prompt) > protocol.MAX_SYSTEM_PROMPT_CHARS:
                raise ProtocolError(
                    f"system_prompt longer than {protocol.MAX_SYSTEM_PROMPT_CHARS} characters")
            self._system_prompt = prompt or self._cfg.default_system_prompt or None
        if VAD_KEYS & data.keys():
            self._set_vad(data)
        if "extras" in data:
            self._extras = bool(data["extras"])

    def _set_vad(self, data: dict[str, Any]) -> None:
        """Turning VAD on drops the unfinished turn (the next one starts at speech onset) and
        turns extras on unless the frame says otherwise; off, buttons alone drive turns."""
        try:
            on, settings = requested_vad(data, on=self._vad is not None, settings=self._vad_settings)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
        self._vad_settings = settings
        if not on:
            self._vad = None
        elif self._vad is None:
            self._vad = VadTurnTracker(self._vad_model, settings)
            self._recording, self._turn_chunks_24k, self._turn_samples = False, [], 0
            self._extras = True
        else:
            self._vad.settings = settings
        self._emit_vad_settings()

    def _emit_vad_settings(self) -> None:
        s = self._vad_settings
        self._emit_extra({"type": "vad", "event": "settings", "on": self._vad is not None,
                          "threshold": s.threshold, "silence_ms": s.silence_ms})

    def _start_recording(self) -> None:
        self._recording = True
        self._turn_chunks_24k, self._turn_samples, self._turn_overflowed = [], 0, False

    async def _end_turn(self) -> None:
        chunks, self._turn_chunks_24k, self._turn_samples = self._turn_chunks_24k, [], 0
        if not chunks:
            logger.info("session %s: turn ended with no audio; nothing to answer", self.id)
            return
        refusal = self._lifecycle.refusal()
        if refusal is not None:
            self._send_error(f"turn not answered: {refusal}")
            return
        pcm_16k = resample(np.concatenate(chunks), WIRE_SAMPLE_RATE, MODEL_SAMPLE_RATE)
        await self._interrupt_reply()  # a new turn supersedes an unfinished answer
        request = ReplyRequest(turn_index=self._turn_index, system_prompt=self._system_prompt,
                               user_audio_16k=pcm_16k, sampling=self._sampling)
        self._turn_index += 1
        self._epoch += 1
        self._progress = ReplyProgress(request, self._epoch, asyncio.get_running_loop().time())
        self._lifecycle.begin_work()  # a drain lets this reply finish
        assert self._tasks is not None
        self._reply_task = self._tasks.create_task(
            self._reply(self._progress), name=f"reply-{self.id}-{request.turn_index}")

    # ---- infer: engine events -> paced outbox -------------------------------------------

    async def _reply(self, progress: ReplyProgress) -> None:
        epoch = progress.epoch
        clock = PlaybackClock(self._cfg.send_ahead_s)
        self._emit(Outgoing(frame=protocol.encode_text(PROCESSING_TEXT), epoch=epoch))
        assert self._conversation is not None
        try:
            async with contextlib.aclosing(self._conversation.reply(progress.request)) as events:
                async for event in events:
                    if isinstance(event, AudioDelta):
                        await self._queue_audio(event.pcm_24k, clock, epoch)
                    elif isinstance(event, TextDelta):
                        progress.produced_text.append(event.text)
                        self._emit(Outgoing(frame=protocol.encode_text(event.text), epoch=epoch,
                                            text=event.text))
                    elif isinstance(event, UserTranscript):
                        self._emit_extra({"type": "transcript", "text": event.text}, epoch)
                    elif isinstance(event, QueuePosition):
                        self._emit_extra({"type": "queue", "position": event.position}, epoch)
        except EngineDead as exc:
            progress.failed = True
            logger.error("session %s: engine dead: %s", self.id, exc)
            self._metrics.errors.labels(exc.kind).inc()
            self._emit(Outgoing(frame=protocol.encode_error(f"the engine stopped: {exc}; reconnect later"),
                                close_code=WSCloseCode.INTERNAL_ERROR))
            return
        except ServingError as exc:
            progress.failed = True
            logger.warning("session %s: reply failed: %s", self.id, exc)
            self._metrics.errors.labels(exc.kind).inc()
            self._send_error(f"reply failed: {exc}" + (" (retry the turn)" if exc.retryable else ""))
        self._emit(Outgoing(epoch=epoch, end_of_reply=True))
        self._emit(Outgoing(frame=protocol.encode_text(
            f"\n[Final: {''.join(progress.produced_text)}]"), epoch=epoch))

    async def _queue_audio(self, pcm_24k: np.ndarray, clock: PlaybackClock, epoch: int) -> None:
        for start in range(0, len(pcm_24k), PACE_SAMPLES_24K):
            piece = pcm_24k[start:start + PACE_SAMPLES_24K]
            await clock.admit(len(piece) / WIRE_SAMPLE_RATE)
            self._emit(Outgoing(pcm_24k=piece, epoch=epoch))

    async def _interrupt_reply(self) -> None:
        """Barge-in: stop the running reply, wait until the engine has let go of it, and keep
        only what the client got.

        A reply is running until the write loop has sent its last item, which can be after
        the reply task itself has finished queueing.
        """
        progress, task = self._progress, self._reply_task
        if progress is None:
            return
        self._epoch += 1  # the write loop now drops everything the old reply queued
        self._reply_task = None
        if task is not None and not task.done():
            task.cancel()
            await _wait_cancelled(task)
        self._finish_reply(progress, "interrupted")

    def _finish_reply(self, progress: ReplyProgress, outcome: str) -> None:
        if progress.finished:
            return
        progress.finished = True
        if self._progress is progress:
            self._progress = None
        assert self._conversation is not None
        self._conversation.commit_reply("".join(progress.sent_text))
        self._lifecycle.end_work()
        self._metrics.turns.labels("failed" if progress.failed else outcome).inc()
        if self._cfg.save_audio:
            self._save_turn_audio(progress)

    # ---- send: outbox -> encoder -> socket ----------------------------------------------

    def _emit(self, item: Outgoing) -> None:
        try:
            self._outbox.put_nowait(item)
        except asyncio.QueueFull:
            self._abort(f"client is not reading ({self._cfg.max_outbox_frames} frames queued)")

    def _emit_extra(self, data: dict[str, Any], epoch: int | None = None) -> None:
        if self._extras:
            self._emit(Outgoing(frame=protocol.encode_metadata(data), epoch=epoch))

    def _send_error(self, message: str) -> None:
        self._emit(Outgoing(frame=protocol.encode_error(message)))

    def _tick(self) -> None:
        """The session's clock (a few ticks per ping interval, not a timer per frame): a ping
        after a silence, and the cut of a client whose send has blocked too long."""
        cfg, now = self._cfg, asyncio.get_running_loop().time()
        if self._send_started is not None and now - self._send_started >= cfg.write_timeout_s:
            self._abort(f"client is not reading (a send blocked {cfg.write_timeout_s:g} s)")
            return
        # anything queued is about to reach the client anyway
        if now - self._last_sent >= cfg.ping_interval_s and self._outbox.empty():
            self._emit(Outgoing(frame=protocol.encode_ping()))
        self._ticker = asyncio.get_running_loop().call_later(self._tick_s, self._tick)

    async def _write_loop(self) -> None:
        while True:
            # get() and send_bytes() both return without suspending when they can, so one
            # session could encode its whole backlog in one go: yield once per frame so that
            # every session's next frame gets its turn on the loop.
            await asyncio.sleep(0)
            item = await self._outbox.get()
            frame = self._render(item)
            if frame and not await self._send(frame):
                return
            if item.close_code is not None:
                await self._ws.close(code=item.close_code)
                return

    async def _send(self, frame: bytes) -> bool:
        """Sends one frame; False when the client is gone. The tick, not a timeout wrapped
        around the await, aborts a send that blocks, so no cancellation is ever lost."""
        loop = asyncio.get_running_loop()
        self._send_started = loop.time()
        try:
            await self._ws.send_bytes(frame)
        except (ConnectionError, RuntimeError) as exc:  # client gone mid-send
            logger.info("session %s: send failed, client gone: %s", self.id, exc)
            return False
        finally:
            self._send_started = None
        self._last_sent = loop.time()
        return True

    def _render(self, item: Outgoing) -> bytes | None:
        """Turns an outbox item into the bytes to send, or None to drop it."""
        if item.epoch is not None and item.epoch != self._epoch:
            return None  # belongs to an interrupted reply
        progress = self._progress
        now = asyncio.get_running_loop().time()
        if item.pcm_24k is not None:
            if progress is not None and progress.first_audio_at is None:
                progress.first_audio_at = now
                self._metrics.first_audio.observe(now - progress.turn_ended_at)
            if progress is not None and self._cfg.save_audio:
                progress.sent_audio_24k.append(item.pcm_24k)
            ogg = self._encoder.encode(item.pcm_24k)
            return protocol.encode_audio(ogg) if ogg else None
        if item.end_of_reply:
            return self._end_of_reply(progress)
        if item.text is not None and progress is not None:
            progress.sent_text.append(item.text)
            progress.first_text_at = progress.first_text_at or now
        return item.frame

    def _end_of_reply(self, progress: ReplyProgress | None) -> bytes | None:
        tail = self._encoder.flush()
        if progress is not None:
            report = self._latency_report(progress)
            logger.info("session %s turn %d: first audio %s ms, first text %s ms, %d chars sent",
                        self.id, report["turn"], report["first_audio_ms"], report["first_text_ms"],
                        sum(map(len, progress.sent_text)))
            self._emit_extra(report, progress.epoch)
            self._finish_reply(progress, "completed")
        return protocol.encode_audio(tail) if tail else None

    def _latency_report(self, progress: ReplyProgress) -> dict[str, Any]:
        def ms(t: float | None) -> float | None:
            return None if t is None else round((t - progress.turn_ended_at) * 1000, 1)

        return {"type": "latency", "turn": progress.request.turn_index,
                "first_audio_ms": ms(progress.first_audio_at),
                "first_text_ms": ms(progress.first_text_at)}

    def _save_turn_audio(self, progress: ReplyProgress) -> None:
        stem = self._cfg.output_dir / f"{self.id}_turn{progress.request.turn_index}"
        reply = (np.concatenate(progress.sent_audio_24k) if progress.sent_audio_24k
                 else np.zeros(0, np.float32))
        started = time.perf_counter()
        write_wav_atomic(f"{stem}_input.wav", progress.request.user_audio_16k, MODEL_SAMPLE_RATE)
        write_wav_atomic(f"{stem}_reply.wav", reply, WIRE_SAMPLE_RATE)
        logger.info("session %s: saved turn audio to %s_*.wav (%.1f ms)", self.id, stem,
                    (time.perf_counter() - started) * 1000)


async def _wait_cancelled(task: asyncio.Task[None]) -> None:
    """Awaits a task that was just cancelled, letting only its own cancellation pass."""
    try:
        await task
    except asyncio.CancelledError:
        if not task.cancelled():
            raise
