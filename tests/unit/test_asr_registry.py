"""models.json in the vLLM ASR plan's format: where each model runs (the plan's host switch and
its environment overrides), defaults, fallbacks, and every malformed file as a clear error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from web_demo.server.engines.asr_registry import RegistryError, load_registry

REPO = Path(__file__).resolve().parents[2]

# The plan's example entries, verbatim in shape (seed 000, "models.json 配置").
PLAN = {"models": {
    "qwen3-asr-1.7b": {
        "name": "Qwen3-ASR-1.7B", "engine": "qwen3",
        "description": "Qwen3-ASR 1.7B via vLLM (Docker Compose)",
        "languages": ["zh", "en", "yue", "ja", "ko"], "default": False, "supports_realtime": False,
        "models": {"offline": "Qwen/Qwen3-ASR-1.7B"},
        "extra_kwargs": {"vllm_host": "vllm-qwen3-1.7b", "vllm_port": 8000}},
    "qwen3-asr-0.6b": {
        "name": "Qwen3-ASR-0.6B", "engine": "qwen3",
        "description": "Qwen3-ASR 0.6B via vLLM (Docker Compose)",
        "languages": ["zh", "en", "yue", "ja", "ko"], "supports_realtime": False,
        "models": {"offline": "Qwen/Qwen3-ASR-0.6B"},
        "extra_kwargs": {"vllm_host": "vllm-qwen3-0.6b", "vllm_port": 8000}},
}}


def write(tmp_path: Path, content: Any) -> Path:
    path = tmp_path / "models.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def test_the_plans_file_makes_two_remote_qwen3_chat_models(tmp_path: Path) -> None:
    registry = load_registry(write(tmp_path, PLAN), environ={})
    big = registry.models["qwen3-asr-1.7b"]
    assert big.remote is not None and big.remote.api == "qwen3-chat"
    assert big.remote.base_url == "http://vllm-qwen3-1.7b:8000" and big.remote.model == "Qwen/Qwen3-ASR-1.7B"
    assert big.languages == ("zh", "en", "yue", "ja", "ko") and big.name == "Qwen3-ASR-1.7B"
    assert registry.default == "qwen3-asr-1.7b"  # no entry marked default: the first
    assert "remote qwen3-chat at http://vllm-qwen3-0.6b:8000" in registry.describe()[1]


def test_environment_overrides_follow_the_plans_compose_file(tmp_path: Path) -> None:
    entries = json.loads(json.dumps(PLAN))
    for entry in entries["models"].values():
        del entry["extra_kwargs"]  # hosts only from the environment
    env = {"QWEN3_VLLM_HOST": "vllm-qwen3-1.7b", "QWEN3_VLLM_PORT": "8000",
           "QWEN3_VLLM_HOST_0_6B": "vllm-qwen3-0.6b", "QWEN3_VLLM_PORT_0_6B": "8001"}
    registry = load_registry(write(tmp_path, entries), environ=env)
    assert registry.models["qwen3-asr-1.7b"].remote.base_url == "http://vllm-qwen3-1.7b:8000"  # type: ignore[union-attr]
    assert registry.models["qwen3-asr-0.6b"].remote.base_url == "http://vllm-qwen3-0.6b:8001"  # type: ignore[union-attr]
    # the full per-model name wins over the file, which wins over the global pair
    env = {"QWEN3_VLLM_HOST_QWEN3_ASR_1_7B": "gpu-7", "QWEN3_VLLM_HOST": "ignored"}
    registry = load_registry(write(tmp_path, PLAN), environ=env)
    assert registry.models["qwen3-asr-1.7b"].remote.base_url == "http://gpu-7:8000"  # type: ignore[union-attr]
    assert registry.models["qwen3-asr-0.6b"].remote.base_url == "http://vllm-qwen3-0.6b:8000"  # type: ignore[union-attr]


def test_no_host_means_embedded_and_a_host_makes_any_engine_remote(tmp_path: Path) -> None:
    registry = load_registry(write(tmp_path, {"models": {
        "fun-asr-nano": {"name": "Fun-ASR-Nano-2512", "engine": "funasr", "default": True,
                         "models": {"offline": "pretrained_models/Fun-ASR-Nano-2512"},
                         "fallbacks": ["whisper-base"]},
        "whisper-base": {"engine": "faster-whisper", "models": {"offline": "whisper-base"}},
        "whisper-vllm": {"engine": "whisper", "extra_kwargs": {
            "vllm_host": "10.0.0.5", "vllm_port": 8100, "served_model_name": "whisper-1",
            "api_key_env": "VLLM_KEY", "timeout_s": 30}},
    }}), environ={"QWEN3_VLLM_HOST": "not-for-whisper"})
    nano, base, remote = (registry.models[k] for k in ("fun-asr-nano", "whisper-base", "whisper-vllm"))
    assert nano.remote is None and nano.local_engine == "funasr" and nano.fallbacks == ("whisper-base",)
    assert base.remote is None and base.local_engine == "faster-whisper" and base.offline == "whisper-base"
    assert remote.remote is not None and remote.remote.api == "openai-transcriptions"
    assert (remote.remote.base_url, remote.remote.model) == ("http://10.0.0.5:8100", "whisper-1")
    assert (remote.remote.api_key_env, remote.remote.timeout_s) == ("VLLM_KEY", 30.0)
    assert registry.default == "fun-asr-nano"
    assert load_registry(write(tmp_path, {"models": {"a": {"engine": "funasr"}, "b": {
        "engine": "funasr"}}}), default="b", environ={}).default == "b"


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "is not valid JSON"),
    ("[]", 'expected {"models"'),
    ({"models": {}}, 'expected {"models"'),
    ({"models": {"a": {"engine": "sphinx"}}}, "engine 'sphinx' is not one of"),
    ({"models": {"a": {}}}, "engine is a required string"),
    ({"models": {"a": {"engine": "qwen3"}}}, "runs only behind a vLLM server"),
    ({"models": {"a": {"engine": "funasr", "langauges": ["zh"]}}}, "unknown field(s) langauges"),
    ({"models": {"a": {"engine": "funasr", "languages": ["zz"]}}}, "unknown language code(s) zz"),
    ({"models": {"a": {"engine": "funasr", "default": "yes"}}}, "default is true or false"),
    ({"models": {"a": {"engine": "funasr", "fallbacks": ["b"]}}}, "falls back to 'b', which is not"),
    ({"models": {"a": {"engine": "funasr", "fallbacks": ["a"]}}}, "falls back to itself"),
    ({"models": {"a": {"engine": "funasr", "default": True}, "b": {"engine": "funasr", "default": True}}},
     "more than one default"),
    ({"models": {"a": {"engine": "qwen3", "extra_kwargs": {"vllm_host": "h", "vllm_port": "x"}}}},
     "is not a port number"),
    ({"models": {"a": {"engine": "qwen3", "extra_kwargs": {"vllm_host": "h", "vllm_port": 70000}}}},
     "out of range"),
    ({"models": {"a b": {"engine": "funasr"}}}, "ids are"),
    ({"models": {"a": {"engine": "funasr", "models": "dir"}}}, '"models" is {"offline"'),
])
def test_a_bad_file_is_a_clear_error(tmp_path: Path, content: Any, message: str) -> None:
    with pytest.raises(RegistryError, match=None) as caught:
        load_registry(write(tmp_path, content), environ={})
    assert message in str(caught.value) and "models.json" in str(caught.value)


def test_a_missing_file_and_an_unknown_default(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="cannot read --models"):
        load_registry(tmp_path / "nope.json", environ={})
    with pytest.raises(RegistryError, match="--default-model 'c' is not in"):
        load_registry(write(tmp_path, {"models": {"a": {"engine": "funasr"}}}), default="c", environ={})


def test_the_shipped_example_loads_as_documented() -> None:
    registry = load_registry(REPO / "models.example.json", environ={})
    assert registry.default == "fun-asr-nano" and len(registry.models) == 4
    nano, base = registry.models["fun-asr-nano"], registry.models["whisper-base"]
    assert nano.remote is None and nano.fallbacks == ("whisper-base",) and base.remote is None
    qwen = registry.models["qwen3-asr-1.7b"].remote
    assert qwen is not None and (qwen.api, qwen.base_url) == ("qwen3-chat", "http://localhost:8101")
    whisper = registry.models["whisper-large-v3-vllm"].remote
    assert whisper is not None and whisper.api == "openai-transcriptions"
    assert (whisper.model, whisper.api_key_env) == ("openai/whisper-large-v3", "WHISPER_VLLM_API_KEY")
    # the plan's compose-style variables move a model without editing the file
    moved = load_registry(REPO / "models.example.json", environ={"QWEN3_VLLM_HOST_1_7B": "gpu-box"})
    assert moved.models["qwen3-asr-1.7b"].remote.base_url == "http://gpu-box:8101"  # type: ignore[union-attr]
