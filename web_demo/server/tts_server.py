"""The TTS service: /api/synthesize, /v1/audio/speech, /api/speakers, /v1/models, /health, /metrics.

    python -m web_demo.server.tts_server --model-path pretrained_models/Fun-CosyVoice3-0.5B-2512 \\
        --port 8004 --device cuda:0 --use-vllm --host 0.0.0.0

With a CosyVoice3 model at --model-path it serves our own CosyVoice3 runtime (zero-shot,
cross-lingual, instruct2, saved speakers; the LLM batched across requests) in a worker per
--device; without one, the espeak-ng CPU stand-in, said loudly. --use-vllm is refused at start
when it cannot be honoured.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from web_demo.server.app import make_app, run_service
from web_demo.server.config import (
    HelpFormatter,
    HttpConfig,
    TtsServiceConfig,
    WorkerConfig,
    add_flags,
    from_args,
)
from web_demo.server.engines.tts_service import build_tts_service_engine, describe_tts_choice
from web_demo.server.lifecycle import bind
from web_demo.server.logs import setup_logging

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TtsServerConfig:
    http: HttpConfig
    tts: TtsServiceConfig
    workers: WorkerConfig


def parse_args(argv: Sequence[str] | None) -> TtsServerConfig:
    p = argparse.ArgumentParser(prog="python -m web_demo.server.tts_server", description=__doc__,
                                formatter_class=HelpFormatter)
    add_flags(p, HttpConfig, "HTTP", port=8004)
    add_flags(p, TtsServiceConfig, "speech synthesis model, voices and limits")
    # A long text synthesises for minutes on a CPU: a longer deadline than the S2S server's.
    add_flags(p, WorkerConfig, "worker processes", request_timeout_s=300.0, hang_timeout_s=600.0)
    a = p.parse_args(argv)
    try:
        return TtsServerConfig(http=from_args(HttpConfig, a), tts=from_args(TtsServiceConfig, a),
                               workers=from_args(WorkerConfig, a))
    except ValueError as exc:
        p.error(str(exc))


def main(argv: Sequence[str] | None = None) -> None:
    cfg = parse_args(argv)
    setup_logging(cfg.http.log_level)
    try:
        engine = build_tts_service_engine(cfg.tts, cfg.workers)  # builds, loads nothing
    except ValueError as exc:
        logger.error("%s", exc)
        sys.exit(f"tts_server: {exc}")
    sock = bind(cfg.http.host, cfg.http.port)
    logger.warning("engine: %s", describe_tts_choice(cfg.tts))
    app = make_app(cfg.http, tts=engine, tts_config=cfg.tts)
    logger.info("listening on http://%s:%d (POST /api/synthesize, POST /v1/audio/speech)",
                cfg.http.host, cfg.http.port)
    run_service(app, sock, cfg.http)


if __name__ == "__main__":
    main()
