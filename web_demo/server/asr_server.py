"""The ASR service: /api/transcribe, /v1/audio/transcriptions, /v1/models, /health, /metrics.

    python -m web_demo.server.asr_server --model-path pretrained_models/Fun-ASR-Nano-2512 \\
        --port 8003 --device cuda:0 --host 0.0.0.0

Without Fun-ASR-Nano weights at --model-path it serves a faster-whisper CPU stand-in
(--stand-in) and says so loudly; a CTranslate2 Whisper directory there is served as it is.
With --models models.json it serves the registry's models instead: local workers and remote
vLLM engines, with fallbacks (see models.example.json).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from web_demo.server.app import make_app, run_service
from web_demo.server.config import (
    AsrServiceConfig,
    HelpFormatter,
    HttpConfig,
    WorkerConfig,
    add_flags,
    from_args,
)
from web_demo.server.engines.asr_registry import load_registry
from web_demo.server.engines.asr_service import (
    build_asr_service_engine,
    build_registry_models,
    describe_asr_choice,
)
from web_demo.server.engines.base import AsrEngine
from web_demo.server.lifecycle import bind
from web_demo.server.logs import setup_logging

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AsrServerConfig:
    http: HttpConfig
    asr: AsrServiceConfig
    workers: WorkerConfig


def parse_args(argv: Sequence[str] | None) -> AsrServerConfig:
    p = argparse.ArgumentParser(prog="python -m web_demo.server.asr_server", description=__doc__,
                                formatter_class=HelpFormatter)
    add_flags(p, HttpConfig, "HTTP", port=8003)
    add_flags(p, AsrServiceConfig, "speech recognition model and limits")
    # A 600 s upload takes minutes on a CPU: the per-request deadline is longer than the S2S one.
    add_flags(p, WorkerConfig, "worker processes", request_timeout_s=300.0, hang_timeout_s=600.0)
    a = p.parse_args(argv)
    try:
        return AsrServerConfig(http=from_args(HttpConfig, a), asr=from_args(AsrServiceConfig, a),
                               workers=from_args(WorkerConfig, a))
    except ValueError as exc:
        p.error(str(exc))


def build_engine(cfg: AsrServerConfig) -> tuple[AsrEngine, list[str]]:
    """The models to serve (from --models, else --model-path) and the lines that say which."""
    if cfg.asr.models is None:
        return build_asr_service_engine(cfg.asr, cfg.workers), [describe_asr_choice(cfg.asr)]
    registry = load_registry(cfg.asr.models, default=cfg.asr.default_model)
    return build_registry_models(registry, cfg.asr, cfg.workers), registry.describe()


def main(argv: Sequence[str] | None = None) -> None:
    cfg = parse_args(argv)
    setup_logging(cfg.http.log_level)
    try:
        engine, described = build_engine(cfg)  # builds, loads nothing
    except ValueError as exc:
        logger.error("%s", exc)
        sys.exit(f"asr_server: {exc}")
    sock = bind(cfg.http.host, cfg.http.port)
    for line in described:
        logger.warning("engine: %s", line)
    app = make_app(cfg.http, asr=engine, asr_config=cfg.asr)
    logger.info("listening on http://%s:%d (POST /api/transcribe, POST /v1/audio/transcriptions)",
                cfg.http.host, cfg.http.port)
    run_service(app, sock, cfg.http)


if __name__ == "__main__":
    main()
