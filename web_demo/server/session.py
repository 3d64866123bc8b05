"""ChatSession: everything one conversation WebSocket owns, whatever its wire protocol.

A `Wire` (chat_wire.py: the binary /api/chat protocol; realtime/wire.py: OpenAI's Realtime
API) reads client frames and calls the session; the session answers through outbox items
that the wire renders into frames. Data path, in the order audio flows:
  wire receive:  client frames -> PCM 16 kHz -> feed_audio() -> turn buffer (VAD optional)
  end of turn:   the turn's PCM 16 kHz -> the wire's turn_ended() -> answer() -> reply task
  reply task:    conversation.reply() events -> stretched to the client's speed, if it set
                 one -> paced (real time + send_ahead) -> outbox
  write loop:    outbox -> wire.render() (Opus pages, JSON events) -> ws.send_*; pings

The receive loop, the write loop and the reply tasks run in one task group: a crash in any
of them closes the socket with 1011 after an error frame instead of leaving a silent socket.
Barge-in (a new turn while a reply runs) bumps the reply epoch, so the write loop drops
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
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from aiohttp import WSCloseCode, WSMessage, WSMsgType, web

from utils.audio import MODEL_SAMPLE_RATE, WIRE_SAMPLE_RATE, write_wav_atomic
from web_demo.server.config import ChatConfig
from web_demo.server.engines.base import (
    AudioDelta,
    QueuePosition,
    ReplyRequest,
    S2SConversation,
    S2SEngine,
    SamplingOptions,
    TextDelta,
    Tool,
    ToolCall,
    ToolResult,
    UserTranscript,
)
from web_demo.server.errors import EngineDead, ProtocolError, ServingError
from web_demo.server.lifecycle import Lifecycle
from web_demo.server.metrics import Metrics
from web_demo.server.tempo import TempoStretch
from web_demo.server.vad import SileroVad, VadEvent, VadSettings, VadTurnTracker

logger = logging.getLogger(__name__)

PACE_SAMPLES_24K = 960  # reply audio leaves in 40 ms units, one Opus frame each
LOGGED_BAD_FRAMES = 3  # per session; the rest are counted in the close line

Frame = bytes | str  # a binary or a text WebSocket frame
OutKind = Literal["frame", "reply_started", "text", "audio", "reply_ended", "event", "error", "ping"]


@dataclass
class ReplyProgress:
    """What one reply has produced and, separately, what has actually reached the client."""
    request: ReplyRequest
    epoch: int
    turn_ended_at: float  # loop time of the end of the turn that triggered the reply
    produced_text: list[str] = field(default_factory=list)
    sent_text: list[str] = field(default_factory=list)
    sent_audio_24k: list[np.ndarray] = field(default_factory=list)  # only with save_audio
    sent_samples_24k: int = 0
    first_audio_at: float | None = None
    first_text_at: float | None = None
    failed: bool = False
    finished: bool = False


@dataclass(frozen=True)
class Outgoing:
    """One outbox item, rendered into frames by the wire when its turn to be sent comes.
    `epoch` None means session-level (errors, pings, most events)."""
    kind: OutKind
    epoch: int | None = None
    frame: Frame | None = None  # "frame": made by the wire already
    text: str | None = None  # "text": a reply's text piece; "error": the message;
    # "reply_ended": the whole text the reply produced
    pcm_24k: np.ndarray | None = None  # "audio": float32 [T], still to encode
    data: dict[str, Any] | None = None  # "event": transcript, queue, latency, vad, ...
    close_code: int | None = None  # close the socket after sending this item's frames


class Wire(Protocol):
    """One wire protocol: reads the client's frames into session calls and renders the
    session's outbox items into frames. Owned by its session."""

    pings: bool  # whether the session sends "ping" items in silences

    async def receive(self, session: ChatSession) -> None:
        """Reads client frames until the client leaves."""
        ...

    async def turn_ended(self, session: ChatSession, pcm_16k: np.ndarray) -> None:
        """A user turn's audio is complete (end of turn, VAD silence, commit)."""
        ...

    async def render(self, item: Outgoing, progress: ReplyProgress | None) -> list[Frame]:
        """The frames of one outbox item (none to drop it). `progress`: the reply running.
        Awaited by the write loop alone, so a wire's codec state sees one item at a time."""
        ...

    def close(self) -> None:
        """The connection is over: free what the wire holds outside the session."""
        ...

    def accept_event(self, data: dict[str, Any]) -> dict[str, Any] | None:
        """The wire's view of an event when it happens: the data to queue (the wire may add
        to it, e.g. ids), or None to drop it before it takes a place in the outbox."""
        ...


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
    """One WebSocket conversation; created and run by its route with the wire it speaks."""

    def __init__(self, ws: web.WebSocketResponse, wire: Wire, *, engine: S2SEngine, cfg: ChatConfig,
                 lifecycle: Lifecycle, metrics: Metrics, transport: asyncio.Transport | None,
                 sampling: SamplingOptions | None = None, vad: VadSettings | None = None,
                 vad_model: SileroVad | None = None, recording: bool = True,
                 session_id: str | None = None) -> None:
        self.id = session_id or uuid.uuid4().hex[:12]
        self.ws = ws
        self.cfg = cfg
        self._wire = wire
        self._transport = transport  # aborted when the client stops reading
        self._engine = engine
        self._lifecycle = lifecycle
        self._metrics = metrics
        self._sampling = sampling  # the client's own sampling settings, for every turn
        self._outbox: asyncio.Queue[Outgoing] = asyncio.Queue(cfg.max_outbox_frames)
        # Recording from the start, as upstream's client expects; with VAD, from speech onset.
        self.recording = recording and vad is None
        self.vad_settings = vad or cfg.vad
        self._vad_model = vad_model or SileroVad()  # the route's, shared by its sessions
        self._vad = None if vad is None else VadTurnTracker(self._vad_model, vad)
        self._turn_chunks_16k: list[np.ndarray] = []
        self._turn_samples = 0
        self._turn_overflowed = False
        self.system_prompt = cfg.default_system_prompt or None  # None: the engine's own
        self.barge_in = True  # speech the VAD hears during a reply cuts it
        self._turn_index = 0
        self._epoch = 0
        self._progress: ReplyProgress | None = None
        self._reply_task: asyncio.Task[None] | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._conversation: S2SConversation | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._tick_s = min(cfg.ping_interval_s, cfg.write_timeout_s) / 4
        self._last_sent = 0.0  # loop time of the last frame sent
        self._last_received = 0.0  # loop time of the last client frame
        self._send_started: float | None = None  # loop time the send in progress began
        self._bad_frames = 0
        self._aborted: str | None = None  # why the connection was cut, if it was

    # ---- lifetime -------------------------------------------------------------------

    async def run(self, opening: list[Outgoing]) -> None:
        """Serves the connection until the client leaves; always cleans up. `opening`: the
        wire's first items (handshake, session description)."""
        self._conversation = self._engine.open_session(self.id, history_turns=self.cfg.history_turns)
        for item in opening:
            self.emit(item)
        self._last_sent = self._last_received = asyncio.get_running_loop().time()
        self._tick()
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                writer = tasks.create_task(self._write_loop(), name=f"ws-writer-{self.id}")
                await self._wire.receive(self)
                await self.interrupt()  # the client is gone: stop its reply
                writer.cancel()
        except* Exception as failure:
            logger.error("session %s crashed", self.id, exc_info=failure.exceptions[0])
            await self._close_after_crash()
        finally:
            await self._aclose()

    async def _aclose(self) -> None:
        await self.interrupt()
        if self._ticker is not None:
            self._ticker.cancel()
        if self._conversation is not None:
            await self._conversation.aclose()
        self._wire.close()
        if self._bad_frames > LOGGED_BAD_FRAMES:
            logger.info("session %s: %d bad frames in all", self.id, self._bad_frames)

    async def _close_after_crash(self) -> None:
        farewell = Outgoing("error", text="internal server error; reconnect")
        for frame in await self._wire.render(farewell, None):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._send_frame(frame)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"internal error")

    def _abort(self, reason: str) -> None:
        """Cuts a client that does not read: a close frame would never reach it either."""
        if self._aborted is None:
            self._aborted = reason
            logger.warning("session %s aborted: %s", self.id, reason)
            if self._transport is not None:
                self._transport.abort()

    async def frames(self) -> AsyncGenerator[WSMessage, None]:
        """The client's frames, each restarting the idle timeout, until it leaves, its socket
        fails or it is cut: the frames a cut client had already sent are not acted on (no
        answer could reach it). Iterate inside `contextlib.aclosing`."""
        async for msg in self.ws:
            if self._aborted is not None:
                return
            if msg.type is WSMsgType.ERROR:
                logger.info("session %s: socket error %s", self.id, self.ws.exception())
                return
            self._last_received = asyncio.get_running_loop().time()
            yield msg

    def bad_frame(self, exc: ProtocolError, answer: Frame | None = None) -> None:
        """A malformed client frame: counted, logged (the first few), answered (with the
        wire's own `answer`, else an error item), survived."""
        self._bad_frames += 1
        if self._bad_frames <= LOGGED_BAD_FRAMES:
            logger.info("session %s: bad frame: %s", self.id, exc)
        self._metrics.errors.labels(exc.kind).inc()
        if answer is None:
            self.send_error(f"bad frame: {exc}")
        else:
            self.emit(Outgoing("frame", frame=answer))

    # ---- input: PCM -> turn -------------------------------------------------------------

    async def feed_audio(self, pcm_16k: np.ndarray) -> None:
        """The client's microphone, float32 [T] at 16 kHz (the model's rate, at which the
        wire decodes it), in any chunk sizes."""
        if self._vad is None:
            if self.recording:
                self._record(pcm_16k)
            return
        # Hands-free: the VAD hears everything; pieces of <= 40 ms, so events land in time.
        for piece, event in self._vad.feed(pcm_16k):
            if self.recording:
                self._record(piece)
            if event is not None:
                await self._on_vad(event)

    async def _on_vad(self, event: VadEvent) -> None:
        """Speech started: barge-in as a new turn does, and the turn begins with the pre-roll
        (unless the client already began one). Speech stopped: the turn ends."""
        self.emit_event({"type": "vad", "event": event.kind, "at_s": round(event.at_s, 3)})
        logger.info("session %s: VAD %s at %.2f s", self.id, event.kind, event.at_s)
        if event.preroll_16k is not None:
            if self.barge_in:
                await self.interrupt()
            if not self.recording:
                self._start_recording()
                self._record(event.preroll_16k)
        else:
            await self.end_turn()

    def _record(self, pcm_16k: np.ndarray) -> None:
        if len(pcm_16k) == 0:
            return
        room = int(self.cfg.max_turn_s * MODEL_SAMPLE_RATE) - self._turn_samples
        if len(pcm_16k) > room:
            pcm_16k = pcm_16k[:max(room, 0)]
            if not self._turn_overflowed:
                self._turn_overflowed = True
                self.send_error(f"turn longer than {self.cfg.max_turn_s:g} s: "
                                "the rest of this turn is dropped; end the turn to get a reply")
        self._turn_chunks_16k.append(pcm_16k)
        self._turn_samples += len(pcm_16k)

    async def start_turn(self) -> None:
        """The client begins a turn (talk pressed): stop any reply, record from now on."""
        await self.interrupt()
        self._start_recording()

    async def end_turn(self) -> None:
        """The client (or the VAD) ends the turn being recorded; the wire decides what then."""
        if not self.recording:
            return
        self.recording = False
        pcm_16k = self.take_turn_audio()
        if pcm_16k is None:
            logger.info("session %s: turn ended with no audio; nothing to answer", self.id)
            return
        await self._wire.turn_ended(self, pcm_16k)

    def take_turn_audio(self) -> np.ndarray | None:
        """The audio recorded since the turn began, float32 [T] at 16 kHz (None: none), and
        a fresh buffer."""
        chunks = self._turn_chunks_16k
        self._turn_chunks_16k, self._turn_samples, self._turn_overflowed = [], 0, False
        if not chunks:
            return None
        return np.concatenate(chunks)

    async def restart(self) -> None:
        """Forget the conversation (the client's restart) and record a new first turn."""
        await self.interrupt()
        assert self._conversation is not None
        self._conversation.reset()
        self._start_recording()

    def set_vad(self, on: bool, settings: VadSettings) -> None:
        """Turning VAD on drops the unfinished turn (the next one starts at speech onset); off,
        the client alone drives turns."""
        self.vad_settings = settings
        if not on:
            self._vad = None
        elif self._vad is None:
            self._vad = VadTurnTracker(self._vad_model, settings)
            self.recording = False
            self.take_turn_audio()
        else:
            self._vad.settings = settings

    @property
    def vad_on(self) -> bool:
        return self._vad is not None

    @property
    def reply_running(self) -> bool:
        """A reply is being generated or sent (until its last item has gone out)."""
        return self._progress is not None

    def _start_recording(self) -> None:
        self.recording = True
        self.take_turn_audio()

    # ---- infer: engine events -> paced outbox -------------------------------------------

    async def answer(self, pcm_16k: np.ndarray | None, *, text: str | None = None,
                     system_prompt: str | None = None, tools: tuple[Tool, ...] = (),
                     tool_results: tuple[ToolResult, ...] = (),
                     sampling: SamplingOptions | None = None, voice: str | None = None,
                     speed: float = 1.0) -> None:
        """Starts the reply to a user turn: speech (float32 [T] at 16 kHz), typed `text` or
        the outputs of the calls the model made; a reply still running is cut first.
        `system_prompt` and what `sampling` sets override the session's for this reply; the
        model may call `tools`; the reply is spoken in `voice` (engines that have voices) at
        `speed` times the engine's rate."""
        refusal = self._lifecycle.refusal()
        if refusal is not None:
            self.send_error(f"turn not answered: {refusal}")
            return
        await self.interrupt()  # a new turn supersedes an unfinished answer
        if sampling is None or sampling == SamplingOptions():  # nothing set: the session's own
            sampling = self._sampling
        else:
            sampling = (self._sampling or SamplingOptions()).overridden_by(sampling)
        request = ReplyRequest(turn_index=self._turn_index,
                               system_prompt=system_prompt or self.system_prompt,
                               user_audio_16k=np.zeros(0, np.float32) if pcm_16k is None else pcm_16k,
                               user_text=text, sampling=sampling, tools=tools,
                               tool_results=tool_results, voice=voice)
        self._turn_index += 1
        self._epoch += 1
        self._progress = ReplyProgress(request, self._epoch, asyncio.get_running_loop().time())
        self._lifecycle.begin_work()  # a drain lets this reply finish
        assert self._tasks is not None
        self._reply_task = self._tasks.create_task(
            self._reply(self._progress, speed), name=f"reply-{self.id}-{request.turn_index}")

    async def _reply(self, progress: ReplyProgress, speed: float) -> None:
        epoch = progress.epoch
        clock = PlaybackClock(self.cfg.send_ahead_s)
        # before pacing, so the client is sent the stretched audio at its real-time rate
        stretch = None if speed == 1.0 else TempoStretch(WIRE_SAMPLE_RATE, speed)
        self.emit(Outgoing("reply_started", epoch=epoch))
        assert self._conversation is not None
        try:
            async with contextlib.aclosing(self._conversation.reply(progress.request)) as events:
                async for event in events:
                    if isinstance(event, AudioDelta):
                        pcm_24k = event.pcm_24k if stretch is None else stretch.process(event.pcm_24k)
                        await self._queue_audio(pcm_24k, clock, epoch)
                    elif isinstance(event, TextDelta):
                        progress.produced_text.append(event.text)
                        self.emit(Outgoing("text", epoch=epoch, text=event.text))
                    elif isinstance(event, UserTranscript):
                        self.emit_event({"type": "transcript", "text": event.text}, epoch)
                    elif isinstance(event, QueuePosition):
                        self.emit_event({"type": "queue", "position": event.position}, epoch)
                    elif isinstance(event, ToolCall):
                        self.emit_event({"type": "tool_call", "call_id": event.call_id,
                                         "name": event.name, "arguments": event.arguments}, epoch)
            if stretch is not None:
                await self._queue_audio(stretch.flush(), clock, epoch)
        except EngineDead as exc:
            progress.failed = True
            logger.error("session %s: engine dead: %s", self.id, exc)
            self._metrics.errors.labels(exc.kind).inc()
            self.emit(Outgoing("error", text=f"the engine stopped: {exc}; reconnect later",
                               close_code=WSCloseCode.INTERNAL_ERROR))
            return
        except ServingError as exc:
            progress.failed = True
            logger.warning("session %s: reply failed: %s", self.id, exc)
            self._metrics.errors.labels(exc.kind).inc()
            self.send_error(f"reply failed: {exc}" + (" (retry the turn)" if exc.retryable else ""))
        self.emit(Outgoing("reply_ended", epoch=epoch, text="".join(progress.produced_text)))

    async def _queue_audio(self, pcm_24k: np.ndarray, clock: PlaybackClock, epoch: int) -> None:
        for start in range(0, len(pcm_24k), PACE_SAMPLES_24K):
            piece = pcm_24k[start:start + PACE_SAMPLES_24K]
            await clock.admit(len(piece) / WIRE_SAMPLE_RATE)
            self.emit(Outgoing("audio", epoch=epoch, pcm_24k=piece))

    async def interrupt(self) -> None:
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
        self.emit_event({"type": "interrupted", "turn": progress.request.turn_index,
                         "sent_text": "".join(progress.sent_text),
                         "sent_audio_ms": round(progress.sent_samples_24k * 1000 / WIRE_SAMPLE_RATE)})

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
        if self.cfg.save_audio:
            self._save_turn_audio(progress)

    # ---- send: outbox -> wire -> socket -------------------------------------------------

    def emit(self, item: Outgoing) -> None:
        try:
            self._outbox.put_nowait(item)
        except asyncio.QueueFull:
            self._abort(f"client is not reading ({self.cfg.max_outbox_frames} frames queued)")

    def emit_event(self, data: dict[str, Any], epoch: int | None = None) -> None:
        accepted = self._wire.accept_event(data)
        if accepted is not None:
            self.emit(Outgoing("event", epoch=epoch, data=accepted))

    def send_error(self, message: str) -> None:
        self.emit(Outgoing("error", text=message))

    def _tick(self) -> None:
        """The session's clock (a few ticks per ping interval, not a timer per frame): a ping
        after a silence, and the cut of a client whose send has blocked too long."""
        cfg, now = self.cfg, asyncio.get_running_loop().time()
        if self._send_started is not None and now - self._send_started >= cfg.write_timeout_s:
            self._abort(f"client is not reading (a send blocked {cfg.write_timeout_s:g} s)")
            return
        if self._progress is None and now - self._last_received >= cfg.idle_timeout_s:
            logger.info("session %s: idle for %g s; closing", self.id, cfg.idle_timeout_s)
            self.emit(Outgoing("error", text=f"no client frame for {cfg.idle_timeout_s:g} s; closing",
                               close_code=WSCloseCode.OK))
            return
        # anything queued is about to reach the client anyway
        if self._wire.pings and now - self._last_sent >= cfg.ping_interval_s and self._outbox.empty():
            self.emit(Outgoing("ping"))
        self._ticker = asyncio.get_running_loop().call_later(self._tick_s, self._tick)

    async def _write_loop(self) -> None:
        while True:
            # get() and send_*() both return without suspending when they can, so one
            # session could encode its whole backlog in one go: yield once per frame so that
            # every session's next frame gets its turn on the loop.
            await asyncio.sleep(0)
            item = await self._outbox.get()
            for frame in await self._render(item):
                if not await self._send(frame):
                    return
            if item.close_code is not None:
                await self.ws.close(code=item.close_code)
                return

    async def _send(self, frame: Frame) -> bool:
        """Sends one frame; False when the client is gone. The tick, not a timeout wrapped
        around the await, aborts a send that blocks, so no cancellation is ever lost."""
        loop = asyncio.get_running_loop()
        self._send_started = loop.time()
        try:
            await self._send_frame(frame)
        except (ConnectionError, RuntimeError) as exc:  # client gone mid-send
            logger.info("session %s: send failed, client gone: %s", self.id, exc)
            return False
        finally:
            self._send_started = None
        self._last_sent = loop.time()
        return True

    async def _send_frame(self, frame: Frame) -> None:
        if isinstance(frame, bytes):
            await self.ws.send_bytes(frame)
        else:
            await self.ws.send_str(frame)

    async def _render(self, item: Outgoing) -> list[Frame]:
        """Accounts for what reaches the client, then lets the wire make the frames."""
        if item.epoch is not None and item.epoch != self._epoch:
            return []  # belongs to an interrupted reply
        progress = self._progress
        now = asyncio.get_running_loop().time()
        if item.kind == "audio" and progress is not None and item.pcm_24k is not None:
            if progress.first_audio_at is None:
                progress.first_audio_at = now
                self._metrics.first_audio.observe(now - progress.turn_ended_at)
            progress.sent_samples_24k += len(item.pcm_24k)
            if self.cfg.save_audio:
                progress.sent_audio_24k.append(item.pcm_24k)
        elif item.kind == "text" and progress is not None and item.text is not None:
            progress.sent_text.append(item.text)
            progress.first_text_at = progress.first_text_at or now
        frames = await self._wire.render(item, progress)
        if item.kind == "reply_ended" and progress is not None:
            self._end_of_reply(progress)
        return frames

    def _end_of_reply(self, progress: ReplyProgress) -> None:
        report = self._latency_report(progress)
        logger.info("session %s turn %d: first audio %s ms, first text %s ms, %d chars sent",
                    self.id, report["turn"], report["first_audio_ms"], report["first_text_ms"],
                    sum(map(len, progress.sent_text)))
        self.emit_event(report, progress.epoch)
        self._finish_reply(progress, "completed")

    def _latency_report(self, progress: ReplyProgress) -> dict[str, Any]:
        def ms(t: float | None) -> float | None:
            return None if t is None else round((t - progress.turn_ended_at) * 1000, 1)

        return {"type": "latency", "turn": progress.request.turn_index,
                "first_audio_ms": ms(progress.first_audio_at),
                "first_text_ms": ms(progress.first_text_at)}

    def _save_turn_audio(self, progress: ReplyProgress) -> None:
        stem = self.cfg.output_dir / f"{self.id}_turn{progress.request.turn_index}"
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
