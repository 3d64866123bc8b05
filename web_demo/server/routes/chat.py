"""The conversation WebSockets, one ChatSession per connection, counted together against
--max-sessions: /api/chat (the binary protocol, chat_wire.py), /api/simplex (the same, under
the path upstream's browser client connects to) and /v1/realtime (OpenAI's Realtime API,
realtime/wire.py).
"""

from __future__ import annotations

import json
import logging
import weakref
from typing import Any

from aiohttp import WSCloseCode, web

from web_demo.server import protocol
from web_demo.server.chat_wire import ChatWire
from web_demo.server.config import ChatConfig
from web_demo.server.engines.base import S2SEngine, SamplingOptions
from web_demo.server.errors import EngineDead
from web_demo.server.lifecycle import Lifecycle
from web_demo.server.metrics import Metrics
from web_demo.server.middleware import REQUEST_ID
from web_demo.server.opus_codec import CodecPool, InlineCodec, SessionCodec
from web_demo.server.realtime import events as rt_events
from web_demo.server.realtime.protocol import MAX_APPEND_B64_CHARS
from web_demo.server.realtime.wire import RealtimeWire
from web_demo.server.sampling_query import sampling_from_query
from web_demo.server.session import ChatSession, Outgoing, Wire
from web_demo.server.vad import SileroVad, VadSettings, requested_vad

logger = logging.getLogger(__name__)

TRY_AGAIN_LATER = 1013  # WebSocket close code: server overloaded or going away
REALTIME_FRAME_SLACK = 64 * 1024  # the JSON around the largest append's base64


class ChatRoute:
    """The sessions of one server and what they need; closes them on shutdown."""

    def __init__(self, *, engine: S2SEngine, cfg: ChatConfig, lifecycle: Lifecycle,
                 metrics: Metrics) -> None:
        self.engine = engine
        self._cfg = cfg
        self._lifecycle = lifecycle
        self._metrics = metrics
        self.sockets: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()
        self._vad_model = SileroVad()  # loaded when a first session asks for VAD; then shared
        self.codecs = CodecPool(cfg.opus_codec_processes)  # each child starts with its first session
        metrics.sessions_active.set_function(lambda: len(self.sockets))

    @property
    def max_sessions(self) -> int:
        return self._cfg.max_sessions

    def mount(self, app: web.Application) -> None:
        app.router.add_get("/api/chat", self.handle)
        app.router.add_get("/api/simplex", self.handle)
        app.router.add_get("/v1/realtime", self.handle_realtime)
        app.on_shutdown.append(self._close_sockets)
        app.on_cleanup.append(self._close_codecs)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """/api/chat and /api/simplex: the binary protocol."""
        cfg = self._cfg
        sampling = sampling_from_query(request.query)  # a bad value: HTTP 400 before the upgrade
        ws = await self._upgrade(request)
        refusal = self._refusal()
        if refusal is not None:
            return await self._refuse(ws, protocol.encode_error(refusal), refusal)
        try:
            vad_on, vad = requested_vad(request.query, on=False, settings=cfg.vad)
        except ValueError as exc:  # the client asked for a VAD we cannot give: say why, like a refusal
            await ws.send_bytes(protocol.encode_error(f"bad query: {exc}"))
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"bad query")
            return ws
        # VAD events travel as extras, so asking for VAD turns them on unless ?extras says no.
        extras = request.query.get("extras", "1" if vad_on else "") in ("1", "true", "yes")
        try:
            codec = await self._codec()
        except EngineDead as exc:  # the child could not start: this session cannot speak
            return await self._refuse(ws, protocol.encode_error(str(exc)), str(exc))
        wire = ChatWire(extras=extras, codec=codec)
        session = self._session(request, ws, wire, sampling=sampling, vad=vad if vad_on else None)
        await self._serve(request, session, wire.opening(session))
        return ws

    async def handle_realtime(self, request: web.Request) -> web.StreamResponse:
        """/v1/realtime: OpenAI's Realtime API over the same sessions and engines."""
        # One append may carry 15 MiB of base64 (OpenAI's limit), more than --max-frame-bytes.
        ws = await self._upgrade(request, max_frame_bytes=MAX_APPEND_B64_CHARS + REALTIME_FRAME_SLACK)
        beta = request.headers.get("OpenAI-Beta", "").startswith("realtime")  # the beta clients' header
        wire = RealtimeWire(model=request.query.get("model", "") or self.engine.name,
                            dialect="beta" if beta else "ga")
        refusal = self._refusal()
        if refusal is not None:
            error = rt_events.error_event(code="server_busy", message=refusal, error_type="server_error")
            return await self._refuse(ws, json.dumps(error), refusal)
        session = self._session(request, ws, wire, vad=wire.initial_vad())
        await self._serve(request, session, wire.opening(session))
        return ws

    async def _upgrade(self, request: web.Request, *,
                       max_frame_bytes: int | None = None) -> web.WebSocketResponse:
        # aiohttp refuses a frame of exactly max_msg_size; the limit we document is inclusive.
        # compress=False declines the permessage-deflate every browser offers: Opus and base64
        # audio do not shrink, and deflating each frame both ways cost the loop about half
        # again its CPU (benchmarks/s2s_load.py).
        ws = web.WebSocketResponse(max_msg_size=(max_frame_bytes or self._cfg.max_frame_bytes) + 1,
                                   heartbeat=self._cfg.ws_heartbeat_s, compress=False)
        await ws.prepare(request)
        return ws

    async def _refuse(self, ws: web.WebSocketResponse, frame: bytes | str,
                      reason: str) -> web.WebSocketResponse:
        self._metrics.sessions.labels("refused").inc()
        logger.warning("refusing a session: %s", reason)
        await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_str(frame))
        await ws.close(code=TRY_AGAIN_LATER, message=b"try again later")
        return ws

    def _session(self, request: web.Request, ws: web.WebSocketResponse, wire: Wire, *,
                 sampling: SamplingOptions | None = None, vad: VadSettings | None) -> ChatSession:
        return ChatSession(ws, wire, engine=self.engine, cfg=self._cfg, lifecycle=self._lifecycle,
                           metrics=self._metrics, transport=request.transport, sampling=sampling,
                           vad=vad, vad_model=self._vad_model)

    async def _serve(self, request: web.Request, session: ChatSession, opening: list[Outgoing]) -> None:
        self.sockets.add(session.ws)
        self._metrics.sessions.labels("admitted").inc()
        logger.info("session %s opened on %s (request %s, %d active)", session.id, request.path,
                    request[REQUEST_ID], len(self.sockets))
        try:
            await session.run(opening)
        finally:
            self.sockets.discard(session.ws)
            logger.info("session %s closed (%d active)", session.id, len(self.sockets))

    def codec_health(self) -> dict[str, Any]:
        """/health's view of where the sessions' Opus coding runs."""
        if self._cfg.opus_codec == "inline":
            return {"mode": "inline"}
        return {"mode": "process", "processes": self.codecs.health()}

    async def _codec(self) -> SessionCodec:
        if self._cfg.opus_codec == "inline":
            return InlineCodec()
        return await self.codecs.open_stream()

    def _refusal(self) -> str | None:
        refusal = self._lifecycle.refusal()
        if refusal is not None:
            return str(refusal)
        if len(self.sockets) >= self._cfg.max_sessions:
            return f"server full ({self._cfg.max_sessions} sessions); try again later"
        return None

    async def _close_sockets(self, app: web.Application) -> None:
        for ws in list(self.sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")

    async def _close_codecs(self, app: web.Application) -> None:
        await self.codecs.aclose()
