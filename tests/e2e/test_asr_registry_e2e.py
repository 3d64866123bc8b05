"""The ASR server started with the shipped models.json example (`--models`), as a process: the
embedded Fun-ASR-Nano (a tiny random-weight release directory in place of the real one), the
CPU Whisper base as everyone's fallback, and two vLLM remotes that are not running. The
service comes up degraded, not dead, and every model answers, the remote ones from their
fallback. A broken registry exits at once with a message naming the problem."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ROOT, RunningServer, free_port, start_server, stop_server
from tests.fun_asr_nano_tiny import build_fun_asr_nano_tiny
from tests.helpers import speech_file

pytestmark = pytest.mark.slow
MODULE = "web_demo.server.asr_server"
FOX_WORDS = {"quick", "brown", "fox", "lazy", "dog"}


def post(server: RunningServer, path: str, body: bytes, content_type: str) -> dict[str, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", data=body,
                                     headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=120) as response:
        return dict(json.loads(response.read()))


def multipart(fields: dict[str, str], file_field: str, data: bytes) -> tuple[bytes, str]:
    boundary = "registry-e2e-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; '
                 f'filename="test.wav"\r\nContent-Type: audio/wav\r\n\r\n'.encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def example_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("registry")
    registry = json.loads((ROOT / "models.example.json").read_text())
    nano = build_fun_asr_nano_tiny(tmp / "Fun-ASR-Nano-2512")
    registry["models"]["fun-asr-nano"]["models"]["offline"] = str(nano)
    for entry in registry["models"].values():  # the remotes: ports where nothing listens
        if "vllm_port" in entry.get("extra_kwargs", {}):
            entry["extra_kwargs"]["vllm_host"], entry["extra_kwargs"]["vllm_port"] = "127.0.0.1", free_port()
    (tmp / "models.json").write_text(json.dumps(registry))
    server = start_server(["--models", str(tmp / "models.json"), "--device", "cpu"], tmp / "asr.log",
                          module=MODULE, env={"HF_HUB_OFFLINE": "1"})
    yield server
    assert stop_server(server) == 0


def test_the_example_registry_comes_up_degraded_and_says_where_each_model_runs(
        example_server: RunningServer) -> None:
    health = example_server.health()
    assert health["status"] == "degraded" and health["model"] == "fun-asr-nano"
    models = health["models"]
    assert models["fun-asr-nano"]["status"] == "healthy" and models["whisper-base"]["status"] == "healthy"
    assert models["qwen3-asr-1.7b"]["status"] == "degraded"  # served by its fallback meanwhile
    log = example_server.log.read_text()
    assert "fun-asr-nano [default]: embedded funasr" in log
    assert "qwen3-asr-1.7b: remote qwen3-chat at http://127.0.0.1:" in log
    assert "falls back to whisper-base" in log


def test_every_model_answers_the_remote_ones_from_their_fallback(example_server: RunningServer) -> None:
    fox = speech_file("fox", "wav")
    body, kind = multipart({"language": "中文", "hotwords": "Fun-Audio-Chat,语音助手"}, "audio", fox)
    plan = post(example_server, "/api/transcribe", body, kind)  # the default: Fun-ASR-Nano
    assert plan["success"] is True and plan["language"] == "中文" and isinstance(plan["text"], str)
    for model in ("qwen3-asr-1.7b", "whisper-large-v3-vllm", "whisper-base"):
        body, kind = multipart({"model": model, "language": "en"}, "file", fox)
        heard = post(example_server, "/v1/audio/transcriptions", body, kind)["text"]
        assert set(heard.lower().replace(".", "").replace(",", "").split()) >= FOX_WORDS, (model, heard)
    stream = post(example_server, "/stream/v1/asr?model_id=whisper-base&language=en", fox, "audio/wav")
    assert stream["status"] == 20000000 and "fox" in stream["result"].lower()


def test_a_broken_registry_exits_at_once_naming_the_problem(tmp_path: Path) -> None:
    cases = {"{not json": "is not valid JSON",
             json.dumps({"models": {"a": {"engine": "funasr", "models": {"offline": str(tmp_path)}}}}):
             "is not a Fun-ASR-Nano directory",
             json.dumps({"models": {"a": {"engine": "qwen3"}}}): "runs only behind a vLLM server"}
    for content, message in cases.items():
        (tmp_path / "models.json").write_text(content)
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", MODULE, "--models", str(tmp_path / "models.json"),
                               "--port", str(free_port())], cwd=ROOT, capture_output=True, timeout=60)
        assert done.returncode != 0 and message in done.stderr.decode(), done.stderr.decode()[-2000:]
        assert time.monotonic() - started < 30  # before any model loads
