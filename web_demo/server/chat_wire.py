"""The binary /api/chat protocol (protocol.py) spoken over a ChatSession.

Client frames -> session calls: 0x01 Ogg pages -> the session's Opus decoder (continuous for
the connection; opus_codec.py) -> feed_audio(), in order, while later frames are read; 0x03
start / endTurn / pause / restart and 0x04 metadata (system prompt, VAD, extras), each after
the audio that came before it. Outbox items -> frames: the "[Processing...]" status text (upstream's;
old clients display it), text pieces, reply audio -> its Opus encoder -> 0x01 pages, the
"\\n[Final: ...]" text at the end of a reply, 0x05 errors, 0x06 pings, and the opt-in 0x04
extras (transcripts, queue positions, latencies, VAD events) that old clients do not know.
Function calling, also opt-in: metadata {"tools": [...]} offers functions with every turn,
a call comes out as 0x04 {"type": "tool_call", ...}, and metadata {"type": "tool_result",
"call_id": ..., "output": ...} is the turn that the model answers (in speech) next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import numpy as np
from aiohttp import WSMsgType

from web_demo.server import protocol
from web_demo.server.engines.base import Tool
from web_demo.server.errors import ProtocolError
from web_demo.server.opus_codec import InlineCodec, SessionCodec
from web_demo.server.protocol import AudioIn, Control, ControlIn, Ignored, MetadataIn
from web_demo.server.session import ChatSession, Frame, Outgoing, ReplyProgress
from web_demo.server.vad import VAD_KEYS, requested_vad

logger = logging.getLogger(__name__)

PROCESSING_TEXT = "[Processing...]"
MIC_PAGES_IN_FLIGHT = 32  # 1.3 s of browser pages (40 ms each)
EXTRA_TYPES = frozenset({"transcript", "queue", "latency", "vad"})  # the events extras carry


class ChatWire:
    """One /api/chat connection's codec state and protocol options; owned by its session."""

    pings = True  # keeps the browser client's 30 s inactivity timer from firing

    def __init__(self, *, extras: bool = False, codec: SessionCodec | None = None) -> None:
        self.extras = extras  # opt-in 0x04 frames that old clients do not know
        self.tools: tuple[Tool, ...] = ()  # offered to the model with every turn
        self._codec = codec or InlineCodec()
        # mic pages sent to the codec and not fed to the session yet; a full queue stops
        # reading the socket until the codec catches up
        self._mic: asyncio.Queue[asyncio.Future[np.ndarray]] = asyncio.Queue(MIC_PAGES_IN_FLIGHT)

    def opening(self, session: ChatSession) -> list[Outgoing]:
        items = [Outgoing("frame", frame=protocol.HANDSHAKE_FRAME)]
        if session.vad_on and self.extras:
            items.append(Outgoing("event", data=_vad_settings(session)))
        return items

    # ---- client frames -> session ---------------------------------------------------------

    async def receive(self, session: ChatSession) -> None:
        try:
            async with asyncio.TaskGroup() as tasks:  # a feeder that fails ends the session
                feeder = tasks.create_task(self._feed_mic(session), name=f"mic-{session.id}")
                await self._read(session)
                feeder.cancel()  # the client is gone: audio still in flight joins no turn
        finally:
            self._drop_mic()

    async def _read(self, session: ChatSession) -> None:
        async with contextlib.aclosing(session.frames()) as frames:
            async for msg in frames:
                try:
                    if msg.type is WSMsgType.BINARY:
                        await self._on_message(session, protocol.decode_binary(msg.data))
                    elif msg.type is WSMsgType.TEXT:
                        await self._on_message(session, protocol.decode_text(msg.data))
                except ProtocolError as exc:
                    session.bad_frame(exc)

    async def _on_message(self, session: ChatSession, message: protocol.ClientMessage) -> None:
        if isinstance(message, AudioIn):
            # Decoded even while not recording: the decoder is continuous for the connection.
            # The next pages are read while these are decoded: awaiting each page's decode
            # before reading on would fall behind the microphone once a round trip to the
            # codec process took longer than a page lasts (40 ms), and the lag would grow
            # over the whole turn.
            await self._mic.put(self._codec.decode(message.ogg))
            return
        await self._mic.join()  # controls and metadata act after the audio sent before them
        if isinstance(message, ControlIn):
            await self._on_control(session, message.action)
        elif isinstance(message, MetadataIn):
            await self._on_metadata(session, message.data)
        elif isinstance(message, Ignored):
            logger.debug("session %s: ignored %s frame", session.id, message.kind.name)

    async def _feed_mic(self, session: ChatSession) -> None:
        """The decoded mic pages to the session, in the order they came."""
        while True:
            pcm = await self._mic.get()
            try:
                await session.feed_audio(await self._decoded(pcm))
            except ProtocolError as exc:
                session.bad_frame(exc)
            finally:
                self._mic.task_done()

    @staticmethod
    async def _decoded(pcm: asyncio.Future[np.ndarray]) -> np.ndarray:
        try:
            return await pcm
        except ValueError as exc:
            raise ProtocolError(f"audio could not be decoded ({exc}); the frame was dropped") from None

    def _drop_mic(self) -> None:
        while not self._mic.empty():
            self._mic.get_nowait().cancel()
            self._mic.task_done()

    async def _on_control(self, session: ChatSession, action: Control) -> None:
        logger.info("session %s: control %s", session.id, action.name)
        if action is Control.START:
            await session.start_turn()
        elif action in (Control.PAUSE, Control.END_TURN):
            await session.end_turn()
        elif action is Control.RESTART:
            await session.restart()

    async def _on_metadata(self, session: ChatSession, data: dict[str, Any]) -> None:
        if data.get("type") == "tool_result":  # the outcome of a call: the model answers it
            await session.answer(None, tools=self.tools, tool_results=(protocol.decode_tool_result(data),))
            return
        if "tools" in data:
            self.tools = protocol.decode_tools(data["tools"])
        if "system_prompt" in data:
            prompt = data["system_prompt"]
            if not isinstance(prompt, str):
                raise ProtocolError("system_prompt must be a string")
            if len(prompt) > protocol.MAX_SYSTEM_PROMPT_CHARS:
                raise ProtocolError(
                    f"system_prompt longer than {protocol.MAX_SYSTEM_PROMPT_CHARS} characters")
            session.system_prompt = prompt or session.cfg.default_system_prompt or None
        if VAD_KEYS & data.keys():
            self._set_vad(session, data)
        if "extras" in data:
            self.extras = bool(data["extras"])

    def _set_vad(self, session: ChatSession, data: dict[str, Any]) -> None:
        """VAD events travel as extras, so turning VAD on turns extras on unless the same
        frame says otherwise."""
        try:
            on, settings = requested_vad(data, on=session.vad_on, settings=session.vad_settings)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
        if on and not session.vad_on:
            self.extras = True
        session.set_vad(on, settings)
        session.emit_event(_vad_settings(session))

    async def turn_ended(self, session: ChatSession, pcm_16k: np.ndarray) -> None:
        await session.answer(pcm_16k, tools=self.tools)

    # ---- outbox items -> frames -----------------------------------------------------------

    def close(self) -> None:
        self._codec.close()

    async def render(self, item: Outgoing, progress: ReplyProgress | None) -> list[Frame]:
        kind = item.kind
        if kind == "frame" and item.frame is not None:
            return [item.frame]
        if kind == "reply_started":
            return [protocol.encode_text(PROCESSING_TEXT)]
        if kind == "text" and item.text is not None:
            return [protocol.encode_text(item.text)]
        if kind == "audio" and item.pcm_24k is not None:
            ogg = await self._codec.encode(item.pcm_24k)
            return [protocol.encode_audio(ogg)] if ogg else []
        if kind == "reply_ended":
            tail = await self._codec.flush()
            final = protocol.encode_text(f"\n[Final: {item.text or ''}]")
            return [protocol.encode_audio(tail), final] if tail else [final]
        if kind == "error" and item.text is not None:
            return [protocol.encode_error(item.text)]
        if kind == "ping":
            return [protocol.encode_ping()]
        if kind == "event" and item.data is not None:
            return [protocol.encode_metadata(item.data)]
        return []

    def accept_event(self, data: dict[str, Any]) -> dict[str, Any] | None:
        """Extras when asked for; a tool call always (only a client that offered tools gets one)."""
        kind = data.get("type")
        return data if kind == "tool_call" or (self.extras and kind in EXTRA_TYPES) else None


def _vad_settings(session: ChatSession) -> dict[str, Any]:
    s = session.vad_settings
    return {"type": "vad", "event": "settings", "on": session.vad_on,
            "threshold": s.threshold, "silence_ms": s.silence_ms}
