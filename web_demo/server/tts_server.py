"""The TTS service: /api/synthesize, /v1/audio/speech, /api/speakers, /v1/models, /health, /metrics.

    python -m web_demo.server.tts_server --model-path pretrained_models/Fun-CosyVoice3-0.5B-2512 \\
        --port 8004 --device cuda:0 --use-vllm --host 0.0.0.0

With a CosyVoice3 model at --model-path it serves our own CosyVoice3 runtime (zero-shot,
cross-lingual, instruct2, saved speakers; the LLM batched across requests) in a worker per
--device; without one, the espeak-ng CPU stand-in, said loudly. With --models it serves a
registry's models instead (local workers, remote speech servers, fallbacks). --use-vllm is
refused at start when it cannot be honoured.
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
from web_demo.server.engines.base import TtsEngine
from web_demo.server.engines.tts_models import build_tts_registry_models
from web_demo.server.engines.tts_registry import load_tts_registry
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


def build_engine(cfg: TtsServerConfig) -> tuple[TtsEngine, list[str]]:
    """The models to serve (from --models, else --model-path) and the lines that say which."""
    if cfg.tts.models is None:
        return build_tts_service_engine(cfg.tts, cfg.workers), [describe_tts_choice(cfg.tts)]
    registry = load_tts_registry(cfg.tts.models, default=cfg.tts.default_model)
    return build_tts_registry_models(registry, cfg.tts, cfg.workers), registry.describe()


def main(argv: Sequence[str] | None = None) -> None:
    cfg = parse_args(argv)
    setup_logging(cfg.http.log_level)
    try:
        engine, described = build_engine(cfg)  # builds, loads nothing
    except ValueError as exc:
        logger.error("%s", exc)
        sys.exit(f"tts_server: {exc}")
    sock = bind(cfg.http.host, cfg.http.port)
    for line in described:
        logger.warning("engine: %s", line)
    app = make_app(cfg.http, tts=engine, tts_config=cfg.tts)
    logger.info("listening on http://%s:%d (POST /api/synthesize, POST /v1/audio/speech)",
                cfg.http.host, cfg.http.port)
    run_service(app, sock, cfg.http)


if __name__ == "__main__":
    main()
