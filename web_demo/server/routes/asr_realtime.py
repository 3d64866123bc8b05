"""/v1/realtime on the ASR server: OpenAI's Realtime API transcription sessions
(realtime/transcription.py), one per WebSocket, at most --max-realtime-sessions at once."""

from __future__ import annotations

import json
import logging
import weakref

from aiohttp import WSCloseCode, web

from web_demo.server.config import AsrServiceConfig
from web_demo.server.engines.asr_models import AsrModels
from web_demo.server.metrics import Metrics
from web_demo.server.realtime import events as ev
from web_demo.server.realtime.transcription import RealtimeTranscription
from web_demo.server.vad import SileroVad

logger = logging.getLogger(__name__)

TRY_AGAIN_LATER = 1013  # WebSocket close code: server overloaded or going away


class RealtimeTranscriptionRoute:
    """The transcription WebSockets of one ASR service; closes them on shutdown."""

    def __init__(self, *, models: AsrModels, cfg: AsrServiceConfig, metrics: Metrics) -> None:
        self._models = models
        self._cfg = cfg
        self._metrics = metrics
        self._vad_model = SileroVad()  # loaded by the first session; then shared
        self.sockets: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()

    def mount(self, app: web.Application) -> None:
        app.router.add_get("/v1/realtime", self.handle)
        app.on_shutdown.append(self._close_sockets)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        # The size limit is above one 15 MiB append. compress=False declines permessage-deflate:
        # base64 audio does not shrink enough to pay for inflating every append.
        ws = web.WebSocketResponse(max_msg_size=20 * 1024 * 1024, heartbeat=20.0, compress=False)
        await ws.prepare(request)
        if len(self.sockets) >= self._cfg.max_realtime_sessions:
            self._metrics.sessions.labels("refused").inc()
            error = ev.error_event(code="server_busy", error_type="server_error", message=(
                f"server full ({self._cfg.max_realtime_sessions} realtime sessions); try again later"))
            await ws.send_str(json.dumps(error))
            await ws.close(code=TRY_AGAIN_LATER, message=b"try again later")
            return ws
        self.sockets.add(ws)
        self._metrics.sessions.labels("admitted").inc()
        logger.info("realtime transcription session opened (%d active)", len(self.sockets))
        try:
            await RealtimeTranscription(ws, models=self._models, vad_model=self._vad_model,
                                        max_segment_s=self._cfg.max_segment_s,
                                        idle_timeout_s=self._cfg.realtime_idle_timeout_s,
                                        write_timeout_s=self._cfg.realtime_write_timeout_s,
                                        transport=request.transport).run()
        finally:
            self.sockets.discard(ws)
            logger.info("realtime transcription session closed (%d active)", len(self.sockets))
        return ws

    async def _close_sockets(self, app: web.Application) -> None:
        for ws in list(self.sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
