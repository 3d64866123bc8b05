"""App composition shared by every service: engines in, an aiohttp application out.

`make_app` mounts a route module per engine it is given (/api/chat and the web demo for an
S2S engine; /api/transcribe, /v1/audio/transcriptions and /v1/models for an ASR engine;
/api/synthesize, /v1/audio/speech and /api/speakers for a TTS engine),
/health and /metrics, behind the shared middleware. `/` is the S2S demo's page wherever
an S2S engine is, else the ASR page (client/asr/) or the TTS page (client/tts/). Engines
load in the background so /health answers `loading` while they do; one process may hold
all of a deployment's engines or just one.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NoReturn

import uvloop
from aiohttp import web

from web_demo.server.config import CLIENT_DIR, AsrServiceConfig, ChatConfig, HttpConfig, TtsServiceConfig
from web_demo.server.engines.asr_models import AsrModels
from web_demo.server.engines.base import AsrEngine, S2SEngine, TtsEngine
from web_demo.server.lifecycle import Lifecycle, Phase, serve, tls_context
from web_demo.server.metrics import CONTENT_TYPE, Metrics
from web_demo.server.middleware import (
    ERROR_EXTRAS,
    admit,
    render_errors,
    request_log,
    require_api_key,
)
from web_demo.server.routes.asr import STREAM_ASR_HEALTH_PATH, AsrRoute
from web_demo.server.routes.asr_realtime import RealtimeTranscriptionRoute
from web_demo.server.routes.chat import ChatRoute
from web_demo.server.routes.tts import TtsRoute
from web_demo.server.routes.web import WebDemo

logger = logging.getLogger(__name__)

LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
METRICS = web.AppKey("metrics", Metrics)
ENGINES = web.AppKey("engines", dict[str, Any])  # role ("s2s", ...) -> engine
CHAT = web.AppKey("chat", ChatRoute)
ASR = web.AppKey("asr", AsrRoute)
TTS = web.AppKey("tts", TtsRoute)

_UNHEALTHY = {"loading", "draining", "failed", "dead"}  # /health answers 503 for these


def make_app(cfg: HttpConfig, *, s2s: S2SEngine | None = None, chat: ChatConfig | None = None,
             asr: AsrEngine | None = None, asr_config: AsrServiceConfig | None = None,
             tts: TtsEngine | None = None, tts_config: TtsServiceConfig | None = None,
             static_dir: Path = CLIENT_DIR) -> web.Application:
    """Builds the app; does no I/O. Engines start with the app and stop with it.

    `asr` is one engine (served under its name) or an AsrModels of several."""
    lifecycle, metrics = Lifecycle(), Metrics()
    app = web.Application(middlewares=[request_log(metrics), render_errors(metrics),
                                       require_api_key(cfg.api_key), admit(lifecycle)])
    app[LIFECYCLE], app[METRICS] = lifecycle, metrics
    app[ERROR_EXTRAS] = {}
    asr_models = AsrModels.single(asr) if asr is not None else None
    app[ENGINES] = {role: engine for role, engine in (("s2s", s2s), ("asr", asr_models), ("tts", tts))
                    if engine is not None}
    metrics.watch_workers(lambda: [engine.health() for engine in app[ENGINES].values()])
    app.cleanup_ctx.append(_engines_lifetime)
    app.on_shutdown.insert(0, _stop_admitting)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics_page)
    WebDemo(static_dir, **_front_page(s2s=s2s is not None, asr=asr is not None,
                                      tts=tts is not None)).mount(app)
    if asr_models is not None:
        app[ASR] = AsrRoute(models=asr_models, cfg=asr_config or AsrServiceConfig(), metrics=metrics)
        app[ASR].mount(app)
        app.router.add_get(STREAM_ASR_HEALTH_PATH, health)  # the vLLM ASR plan's health URL
        if s2s is None:  # with an S2S engine, /v1/realtime is its conversations
            RealtimeTranscriptionRoute(models=asr_models, cfg=asr_config or AsrServiceConfig(),
                                       metrics=metrics).mount(app)
    if tts is not None:
        app[TTS] = TtsRoute(engine=tts, cfg=tts_config or TtsServiceConfig(), metrics=metrics)
        app[TTS].mount(app, models_route=asr_models is None)  # one /v1/models: the ASR one
    if s2s is not None:
        app[CHAT] = ChatRoute(engine=s2s, cfg=chat or ChatConfig(), lifecycle=lifecycle, metrics=metrics)
        app[CHAT].mount(app)
    return app


def _front_page(*, s2s: bool, asr: bool, tts: bool) -> dict[str, str]:
    """WebDemo's options for `/`: the S2S demo, else this service's own test page."""
    if s2s or not (asr or tts):
        return {}
    if asr:  # also ASR with TTS: one page at /, the TTS page is /static/tts/index.html
        return {"page": "asr/index.html",
                "missing": "Fun-Audio-Chat ASR server: POST /v1/audio/transcriptions"}
    return {"page": "tts/index.html", "missing": "Fun-Audio-Chat TTS server: POST /v1/audio/speech"}


async def _engines_lifetime(app: web.Application) -> AsyncIterator[None]:
    """Loads the engines in the background (the port answers meanwhile), closes them last."""
    loading = asyncio.create_task(_start_engines(app), name="start-engines")
    yield
    loading.cancel()
    await asyncio.gather(loading, return_exceptions=True)
    for role, engine in app[ENGINES].items():
        try:
            await engine.aclose()
        except Exception:
            logger.exception("closing the %s engine failed", role)


async def _start_engines(app: web.Application) -> None:
    lifecycle = app[LIFECYCLE]
    for role, engine in app[ENGINES].items():
        try:
            await engine.start()
        except Exception as exc:
            logger.exception("the %s engine (%s) failed to start", role, engine.name)
            lifecycle.fail(f"{role} engine {engine.name}: {exc}")
            return
        logger.info("%s engine %s ready", role, engine.name)
    lifecycle.ready()


async def _stop_admitting(app: web.Application) -> None:
    if app[LIFECYCLE].phase is Phase.READY:
        app[LIFECYCLE].phase = Phase.DRAINING


def service_status(phase: Phase, reports: list[dict[str, Any]]) -> str:
    """healthy | degraded | loading | draining | failed | dead, from phase and engines."""
    if phase is not Phase.READY:
        return str(phase.value)
    statuses = {report.get("status") for report in reports}
    if "dead" in statuses:
        return "dead"
    return "degraded" if "degraded" in statuses else "healthy"


async def health(request: web.Request) -> web.Response:
    app = request.app
    lifecycle = app[LIFECYCLE]
    reports = {role: engine.health() for role, engine in app[ENGINES].items()}
    # The flat shape of the S2S server, or of the ASR service ({"status", "model", "device"}),
    # or of the TTS service (the same and "vllm_enabled"); the others nested by role.
    main = next(role for role in ("s2s", "asr", "tts", None) if role is None or role in reports)
    report: dict[str, Any] = dict(reports.get(main) or {}) if main else {}
    for role, other in reports.items():
        if role != main:
            report[role] = other
    report["status"] = service_status(lifecycle.phase, list(reports.values()))
    if lifecycle.failure:
        report["error"] = lifecycle.failure
    if CHAT in app:
        report["sessions"] = {"active": len(app[CHAT].sockets), "max": app[CHAT].max_sessions}
        report["opus_codec"] = app[CHAT].codec_health()
    report["in_flight"] = lifecycle.busy
    return web.json_response(report, status=503 if report["status"] in _UNHEALTHY else 200)


async def metrics_page(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE})


def run_service(app: web.Application, sock: socket.socket, cfg: HttpConfig) -> NoReturn:
    """Every entrypoint's last step: serve until SIGTERM/SIGINT, exit with serve()'s code."""
    try:
        ssl_context = tls_context(cfg.ssl_certfile, cfg.ssl_keyfile)
    except ValueError as exc:
        logger.error("%s", exc)
        sys.exit(f"{exc}")
    if ssl_context is not None:
        logger.info("serving HTTPS and WSS with %s", cfg.ssl_certfile)
    # uvloop: the same asyncio API with its I/O and timers in C (benchmarks/s2s_load.py)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        sys.exit(runner.run(serve(app, sock, lifecycle=app[LIFECYCLE], drain_timeout_s=cfg.drain_timeout_s,
                                  ssl_context=ssl_context)))
