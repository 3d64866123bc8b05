"""The speech-to-speech server: /api/chat (WebSocket), the web demo, /health, /metrics.

    python -m web_demo.server.server --model-path pretrained_models/Fun-Audio-Chat-8B \\
        --port 8002 --tts-gpu 0 --host 0.0.0.0
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from web_demo.server.app import make_app, run_service
from web_demo.server.config import (
    AsrConfig,
    ChatConfig,
    HelpFormatter,
    HttpConfig,
    ResponderConfig,
    S2SConfig,
    TtsConfig,
    VocoderConfig,
    WorkerConfig,
    add_flags,
    from_args,
)
from web_demo.server.engines.builders import build_s2s_engine, describe_s2s_choice
from web_demo.server.lifecycle import bind
from web_demo.server.logs import setup_logging

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class S2SServerConfig:
    http: HttpConfig
    chat: ChatConfig
    s2s: S2SConfig
    vocoder: VocoderConfig
    asr: AsrConfig
    tts: TtsConfig
    responder: ResponderConfig
    workers: WorkerConfig


def parse_args(argv: Sequence[str] | None) -> S2SServerConfig:
    p = argparse.ArgumentParser(prog="python -m web_demo.server.server", description=__doc__,
                                formatter_class=HelpFormatter)
    add_flags(p, HttpConfig, "HTTP", port=8002)
    add_flags(p, ChatConfig, "/api/chat sessions")
    add_flags(p, S2SConfig, "speech-to-speech engine")
    add_flags(p, VocoderConfig, "CosyVoice3 vocoder (funaudiochat engine)")
    add_flags(p, AsrConfig, "speech recognition (cascade engine)")
    add_flags(p, TtsConfig, "speech synthesis (cascade engine)")
    add_flags(p, ResponderConfig, "text responder (cascade engine)")
    add_flags(p, WorkerConfig, "worker processes")
    a = p.parse_args(argv)
    try:
        return S2SServerConfig(
            http=from_args(HttpConfig, a), chat=from_args(ChatConfig, a), s2s=from_args(S2SConfig, a),
            vocoder=from_args(VocoderConfig, a), asr=from_args(AsrConfig, a), tts=from_args(TtsConfig, a),
            responder=from_args(ResponderConfig, a), workers=from_args(WorkerConfig, a))
    except ValueError as exc:
        p.error(str(exc))


def main(argv: Sequence[str] | None = None) -> None:
    cfg = parse_args(argv)
    setup_logging(cfg.http.log_level)
    try:
        engine = build_s2s_engine(cfg.s2s, vocoder=cfg.vocoder, asr=cfg.asr, tts=cfg.tts,
                                  responder=cfg.responder, workers=cfg.workers)
    except ValueError as exc:
        logger.error("%s", exc)
        sys.exit(f"server: {exc}")
    sock = bind(cfg.http.host, cfg.http.port)
    logger.warning("engine: %s", describe_s2s_choice(cfg.s2s, cfg.responder, cfg.asr, cfg.tts))
    app = make_app(cfg.http, s2s=engine, chat=cfg.chat)
    logger.info("listening on http://%s:%d (WebSocket /api/chat)", cfg.http.host, cfg.http.port)
    run_service(app, sock, cfg.http)


if __name__ == "__main__":
    main()
