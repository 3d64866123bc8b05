"""tts_models.json in the ASR registry's format: where each TTS model runs (the host switch and
its TTS_VLLM_HOST_<ID> overrides), defaults, fallbacks, and every malformed file as a clear error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from web_demo.server.engines.tts_registry import RegistryError, load_tts_registry

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "tts_models.example.json"
OMNI = "FunAudioLLM/Fun-CosyVoice3-0.5B-2512"  # how vLLM-Omni serves CosyVoice3


def write(tmp_path: Path, content: Any) -> Path:
    path = tmp_path / "tts_models.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def cosyvoice3_dir(root: Path, name: str = "Fun-CosyVoice3-0.5B-2512",
                   marker: str = "cosyvoice3.yaml") -> Path:
    """A directory that passes the load-time check (the check looks for the file, not inside it)."""
    path = root / name
    path.mkdir(parents=True)
    (path / marker).write_text("{}", encoding="utf-8")
    return path


def test_every_field_and_where_each_entry_runs(tmp_path: Path) -> None:
    model_dir = cosyvoice3_dir(tmp_path, marker="llm_config.json")  # the tiny test layout counts too
    registry = load_tts_registry(write(tmp_path, {"models": {
        "cv3": {"name": "CosyVoice3", "engine": "cosyvoice3", "description": "local",
                "models": {"offline": str(model_dir)}, "extra_kwargs": {"voice": "中文女"},
                "fallbacks": ["espeak", "omni"]},
        "espeak": {"engine": "espeak-ng", "default": True, "extra_kwargs": {"voice": "de"}},
        "omni": {"engine": "openai-speech", "models": {"offline": OMNI},
                 "extra_kwargs": {"vllm_host": "10.0.0.5", "vllm_port": 8104, "api_key_env": "OMNI_KEY",
                                  "timeout_s": 30, "voice_cloning": True}},
        "openai": {"engine": "openai-speech", "extra_kwargs": {
            "vllm_host": "api.openai.com", "vllm_port": 443, "vllm_tls": True, "model": "gpt-4o-mini-tts",
            "voice": "coral"}},
    }}), env={})
    cv3, espeak, omni, openai = (registry.models[k] for k in ("cv3", "espeak", "omni", "openai"))
    assert (cv3.name, cv3.engine, cv3.description) == ("CosyVoice3", "cosyvoice3", "local")
    assert not cv3.default
    assert cv3.remote is None and cv3.local_engine == "cosyvoice3" and cv3.offline == str(model_dir)
    assert cv3.voice == "中文女" and cv3.fallbacks == ("espeak", "omni")
    assert espeak.remote is None and espeak.local_engine == "espeak-ng" and espeak.voice == "de"
    assert espeak.name == "espeak" and espeak.offline is None
    assert omni.remote is not None and omni.remote.api == "openai-speech"
    assert (omni.remote.base_url, omni.remote.model) == ("http://10.0.0.5:8104", OMNI)
    assert (omni.remote.api_key_env, omni.remote.timeout_s) == ("OMNI_KEY", 30.0)
    assert omni.remote.voice_cloning
    assert openai.remote is not None and openai.remote.base_url == "https://api.openai.com:443"
    assert (openai.remote.model, openai.voice, openai.remote.timeout_s) == ("gpt-4o-mini-tts", "coral", 60.0)
    assert registry.default == "espeak" and registry.source.endswith("tts_models.json")
    lines = registry.describe()
    assert lines[0] == f"cv3: embedded cosyvoice3 ({model_dir}), falls back to espeak, omni"
    assert lines[1] == "espeak [default]: embedded espeak-ng (no directory)"
    assert lines[2].startswith("omni: remote openai-speech at http://10.0.0.5:8104")


def test_the_default_is_the_marked_one_the_asked_one_or_the_first(tmp_path: Path) -> None:
    path = write(tmp_path, {"models": {"a": {"engine": "espeak-ng"}, "b": {"engine": "espeak-ng"}}})
    assert load_tts_registry(path, env={}).default == "a"
    assert load_tts_registry(path, default="b", env={}).default == "b"
    with pytest.raises(RegistryError, match=r"--default-model 'c' is not in .*models: a, b"):
        load_tts_registry(path, default="c", env={})


def test_a_host_makes_any_entry_remote_and_the_environment_beats_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, {"models": {
        "cosyvoice3-0.5b": {"engine": "cosyvoice3", "models": {"offline": OMNI}},
    }})
    # no directory is needed once the model is remote; models.offline is then the served name
    env = {"TTS_VLLM_HOST_COSYVOICE3_0_5B": "gpu-7", "TTS_VLLM_PORT_COSYVOICE3_0_5B": "8104"}
    cv3 = load_tts_registry(path, env=env).models["cosyvoice3-0.5b"]
    assert cv3.remote is not None and cv3.remote.base_url == "http://gpu-7:8104"
    assert cv3.remote.model == OMNI
    # a `_`-separated tail of two parts or more names the model too; the longest set one wins
    registry = load_tts_registry(path, env={"TTS_VLLM_HOST_0_5B": "tail", "TTS_VLLM_HOST_5B": "too-short"})
    assert registry.models["cosyvoice3-0.5b"].remote.base_url == "http://tail:8000"  # type: ignore[union-attr]
    env = {"TTS_VLLM_HOST_0_5B": "tail", "TTS_VLLM_HOST_COSYVOICE3_0_5B": "full"}
    registry = load_tts_registry(path, env=env)
    assert registry.models["cosyvoice3-0.5b"].remote.base_url == "http://full:8000"  # type: ignore[union-attr]
    with pytest.raises(RegistryError, match="not a CosyVoice3 directory"):  # no host: embedded again
        load_tts_registry(path, env={"TTS_VLLM_HOST_5B": "too-short"})
    with pytest.raises(RegistryError, match="vllm_port 'x' is not a port number"):
        load_tts_registry(path, env={**env, "TTS_VLLM_PORT_COSYVOICE3_0_5B": "x"})
    # the file's host and port, each replaced by its variable
    path = write(tmp_path, {"models": {
        "espeak-ng": {"engine": "espeak-ng", "extra_kwargs": {"vllm_host": "file-host", "vllm_port": 9000}}}})
    espeak = load_tts_registry(path, env={"TTS_VLLM_HOST_ESPEAK_NG": "gpu-7"}).models["espeak-ng"]
    assert espeak.remote is not None and espeak.remote.base_url == "http://gpu-7:9000"
    assert espeak.remote.model == "espeak-ng"  # no model, no offline: the id
    espeak = load_tts_registry(path, env={"TTS_VLLM_PORT_ESPEAK_NG": "9001"}).models["espeak-ng"]
    assert espeak.remote is not None and espeak.remote.base_url == "http://file-host:9001"


def test_an_embedded_cosyvoice3_directory_is_checked_at_load(tmp_path: Path, monkeypatch: Any) -> None:
    content = {"models": {"cv3": {"engine": "cosyvoice3", "models": {"offline": "models/cv3"}}}}
    path = write(tmp_path, content)
    with pytest.raises(RegistryError, match=r"model 'cv3'.*'models/cv3' is not a CosyVoice3 directory"):
        load_tts_registry(path, env={})
    cosyvoice3_dir(tmp_path / "models", "cv3")
    monkeypatch.chdir(tmp_path)  # a relative directory is the working directory's, as for ASR
    assert load_tts_registry(path, env={}).models["cv3"].offline == "models/cv3"
    path = write(tmp_path, {"models": {"cv3": {"engine": "cosyvoice3"}}})
    with pytest.raises(RegistryError, match=r"models\.offline None is not a CosyVoice3 directory"):
        load_tts_registry(path, env={})


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "is not valid JSON"),
    ("[]", 'expected {"models"'),
    ({"models": {}}, 'expected {"models"'),
    ({"models": []}, 'expected {"models"'),
    ({"models": {"a": "espeak-ng"}}, "an entry is a JSON object"),
    ({"models": {"a b": {"engine": "espeak-ng"}}}, "ids are"),
    ({"models": {"a": {}}}, "engine is a required string"),
    ({"models": {"a": {"engine": "piper"}}},
     "engine 'piper' is not one of cosyvoice3, espeak-ng, openai-speech"),
    ({"models": {"a": {"engine": "espeak-ng", "languages": ["en"]}}}, "unknown field(s) languages"),
    ({"models": {"a": {"engine": "espeak-ng", "extra_kwargs": {"vllm_hots": "h"}}}},
     "unknown field(s) extra_kwargs.vllm_hots"),
    ({"models": {"a": {"engine": "espeak-ng", "extra_kwargs": ["h"]}}}, "extra_kwargs is a JSON object"),
    ({"models": {"a": {"engine": "espeak-ng", "name": 3}}}, "name is a string"),
    ({"models": {"a": {"engine": "espeak-ng", "default": "yes"}}}, "default is true or false"),
    ({"models": {"a": {"engine": "espeak-ng", "extra_kwargs": {"voice": 1}}}},
     "extra_kwargs.voice is a string"),
    ({"models": {"a": {"engine": "espeak-ng", "extra_kwargs": {"voice_cloning": 1}}}},
     "extra_kwargs.voice_cloning is true or false"),
    ({"models": {"a": {"engine": "espeak-ng", "models": "dir"}}}, '"models" is {"offline"'),
    ({"models": {"a": {"engine": "espeak-ng", "models": {"online": "x"}}}}, '"models" is {"offline"'),
    ({"models": {"a": {"engine": "espeak-ng", "models": {"offline": "x"}}}},
     "espeak-ng takes no models.offline"),
    ({"models": {"a": {"engine": "openai-speech"}}}, "runs only behind a server"),
    ({"models": {"a": {"engine": "espeak-ng", "fallbacks": "b"}}}, "fallbacks is a list of model ids"),
    ({"models": {"a": {"engine": "espeak-ng", "fallbacks": ["b"]}}}, "falls back to 'b', which is not"),
    ({"models": {"a": {"engine": "espeak-ng", "fallbacks": ["a"]}}}, "falls back to itself"),
    ({"models": {"a": {"engine": "espeak-ng", "default": True},
                 "b": {"engine": "espeak-ng", "default": True}}},
     "more than one default model (a, b)"),
    ({"models": {"a": {"engine": "openai-speech", "extra_kwargs": {"vllm_host": "h", "vllm_port": "x"}}}},
     "is not a port number"),
    ({"models": {"a": {"engine": "openai-speech", "extra_kwargs": {"vllm_host": "h", "vllm_port": True}}}},
     "is not a port number"),
    ({"models": {"a": {"engine": "openai-speech", "extra_kwargs": {"vllm_host": "h", "vllm_port": 70000}}}},
     "out of range"),
    ({"models": {"a": {"engine": "espeak-ng", "extra_kwargs": {"vllm_port": 0}}}}, "out of range"),
    ({"models": {"a": {"engine": "openai-speech", "extra_kwargs": {"vllm_host": "h", "timeout_s": 0}}}},
     "timeout_s must be 0..3600 seconds"),
    ({"models": {"a": {"engine": "openai-speech", "extra_kwargs": {"vllm_host": "h", "timeout_s": "9"}}}},
     "timeout_s must be 0..3600 seconds"),
    ({"models": {"a": {"engine": "openai-speech", "extra_kwargs": {"vllm_host": 7}}}},
     "extra_kwargs.vllm_host is a string"),
])
def test_a_bad_file_is_a_clear_error(tmp_path: Path, content: Any, message: str) -> None:
    with pytest.raises(RegistryError) as caught:
        load_tts_registry(write(tmp_path, content), env={})
    assert message in str(caught.value) and "tts_models.json" in str(caught.value)
    if isinstance(content, dict) and isinstance(content["models"], dict) and len(content["models"]) == 1:
        assert "model 'a'" in str(caught.value) or "model 'a b'" in str(caught.value)


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match=r"cannot read --models .*nope\.json"):
        load_tts_registry(tmp_path / "nope.json", env={})


def test_the_shipped_example_loads_as_documented(tmp_path: Path, monkeypatch: Any) -> None:
    cosyvoice3_dir(tmp_path / "pretrained_models")
    monkeypatch.chdir(tmp_path)  # where the example's relative CosyVoice3 directory is found
    registry = load_tts_registry(EXAMPLE, env={})
    assert registry.default == "cosyvoice3"
    assert list(registry.models) == ["cosyvoice3", "espeak-ng", "cosyvoice3-vllm"]
    cv3, espeak, omni = registry.models.values()
    assert cv3.remote is None and cv3.offline == "pretrained_models/Fun-CosyVoice3-0.5B-2512"
    assert cv3.fallbacks == ("espeak-ng",) and espeak.remote is None and espeak.fallbacks == ()
    assert omni.remote is not None and omni.remote.base_url == "http://localhost:8104"
    assert (omni.engine, omni.remote.model) == ("openai-speech", OMNI)
    assert omni.remote.voice_cloning and omni.fallbacks == ("espeak-ng",)
    # the host switch moves the local model to a server without editing the file
    moved = load_tts_registry(EXAMPLE, env={"TTS_VLLM_HOST_COSYVOICE3": "gpu-box"}).models["cosyvoice3"]
    assert moved.remote is not None and moved.remote.base_url == "http://gpu-box:8000"


def test_the_shipped_example_without_the_model_says_which_directory(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RegistryError, match=r"model 'cosyvoice3'.*'pretrained_models/Fun-CosyVoice3-0\.5B"):
        load_tts_registry(EXAMPLE, env={})
