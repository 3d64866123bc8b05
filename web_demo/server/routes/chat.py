"""/api/chat: the binary WebSocket protocol (protocol.py), one ChatSession per connection.

/api/simplex is the same endpoint under the path upstream's browser client connects to.
"""

from __future__ import annotations

import logging
import weakref

from aiohttp import WSCloseCode, web

from web_demo.server import protocol
from web_demo.server.chat_wire import ChatWire
from web_demo.server.config import ChatConfig
from web_demo.server.engines.base import S2SEngine
from web_demo.server.lifecycle import Lifecycle
from web_demo.server.metrics import Metrics
from web_demo.server.middleware import REQUEST_ID
from web_demo.server.sampling_query import sampling_from_query
from web_demo.server.session import ChatSession
from web_demo.server.vad import SileroVad, requested_vad

logger = logging.getLogger(__name__)

TRY_AGAIN_LATER = 1013  # WebSocket close code: server overloaded or going away


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
        metrics.sessions_active.set_function(lambda: len(self.sockets))

    @property
    def max_sessions(self) -> int:
        return self._cfg.max_sessions

    def mount(self, app: web.Application) -> None:
        app.router.add_get("/api/chat", self.handle)
        app.router.add_get("/api/simplex", self.handle)
        app.on_shutdown.append(self._close_sockets)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        cfg = self._cfg
        sampling = sampling_from_query(request.query)  # a bad value: HTTP 400 before the upgrade
        # aiohttp refuses a frame of exactly max_msg_size; the limit we document is inclusive.
        ws = web.WebSocketResponse(max_msg_size=cfg.max_frame_bytes + 1, heartbeat=cfg.ws_heartbeat_s)
        await ws.prepare(request)
        refusal = self._refusal()
        if refusal is not None:
            self._metrics.sessions.labels("refused").inc()
            logger.warning("refusing a session: %s", refusal)
            await ws.send_bytes(protocol.encode_error(refusal))
            await ws.close(code=TRY_AGAIN_LATER, message=b"try again later")
            return ws
        try:
            vad_on, vad = requested_vad(request.query, on=False, settings=cfg.vad)
        except ValueError as exc:  # the client asked for a VAD we cannot give: say why, like a refusal
            await ws.send_bytes(protocol.encode_error(f"bad query: {exc}"))
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"bad query")
            return ws
        # VAD events travel as extras, so asking for VAD turns them on unless ?extras says no.
        extras = request.query.get("extras", "1" if vad_on else "") in ("1", "true", "yes")
        wire = ChatWire(extras=extras)
        session = ChatSession(ws, wire, engine=self.engine, cfg=cfg, lifecycle=self._lifecycle,
                              metrics=self._metrics, transport=request.transport,
                              sampling=sampling, vad=vad if vad_on else None,
                              vad_model=self._vad_model)
        self.sockets.add(ws)
        self._metrics.sessions.labels("admitted").inc()
        logger.info("session %s opened (request %s, %d active)", session.id, request[REQUEST_ID],
                    len(self.sockets))
        try:
            await session.run(wire.opening(session))
        finally:
            self.sockets.discard(ws)
            logger.info("session %s closed (%d active)", session.id, len(self.sockets))
        return ws

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
