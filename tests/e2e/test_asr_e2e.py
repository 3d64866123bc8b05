"""The ASR server as a process, started the way the deployment plan starts it, driven by the
plan's own curl command."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, RunningServer, free_port, start_server, stop_server
from tests.helpers import FIXTURES
from web_demo.server.devices import nvidia_driver_present
from web_demo.server.engines.asr_service import fun_asr_nano_present

pytestmark = pytest.mark.slow

MODULE = "web_demo.server.asr_server"
PLAN_MODEL_PATH = "pretrained_models/Fun-ASR-Nano-2512"
# The deployment plan's example request, verbatim but for the port.
PLAN_CURL = """curl -X POST http://localhost:8003/api/transcribe \\
    -F "audio=@test.wav" \\
    -F "language=中文" \\
    -F "hotwords=Fun-Audio-Chat,语音助手\""""


def plan_curl(server: RunningServer, cwd: Path, command: str = PLAN_CURL) -> dict:
    done = subprocess.run(["bash", "-c", command.replace("localhost:8003", f"localhost:{server.port}")],
                          cwd=cwd, capture_output=True, timeout=120, check=True)
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def plan_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The plan's command (--model-path, --device cuda:0) on a machine without the weights."""
    if fun_asr_nano_present(ROOT / PLAN_MODEL_PATH):
        pytest.skip("real Fun-ASR-Nano weights are present: the plan's command serves them, "
                    "not the stand-in (test_asr_funasr_e2e.py covers the funasr engine)")
    log = tmp_path_factory.mktemp("asr") / "asr_server.log"
    server = start_server(["--model-path", PLAN_MODEL_PATH, "--device", "cuda:0"], log, module=MODULE)
    yield server
    assert stop_server(server) == 0


def test_the_plan_command_serves_the_cpu_stand_in_and_says_so(plan_server: RunningServer,
                                                              tmp_path: Path) -> None:
    health = plan_server.health()
    assert (health["status"], health["model"]) == ("healthy", "whisper-tiny.en")
    log = plan_server.log.read_text()
    assert "CPU STAND-IN, NOT Fun-ASR-Nano" in log
    if not nvidia_driver_present():
        assert health["device"] == "cpu" and "(asked cuda:0: no GPU)" in log
    shutil.copy(FIXTURES / "speech" / "fox.wav", tmp_path / "test.wav")
    # English-only tiny.en and the plan's 中文: a clear 400 in the plan's shape, never a guess.
    body = plan_curl(plan_server, tmp_path)
    assert body["success"] is False and body["error"]["param"] == "language", body
    assert "'中文'" in body["error"]["message"] and "only en" in body["error"]["message"]
    body = plan_curl(plan_server, tmp_path, PLAN_CURL.replace("language=中文", "language=英文"))
    assert body["success"] is True and body["language"] == "英文", body
    assert {"quick", "brown", "fox"} <= set(body["text"].lower().replace(".", "").split())


def test_the_plan_curl_verbatim_with_a_model_that_takes_chinese(tmp_path: Path) -> None:
    server = start_server(["--stand-in", "whisper-base"], tmp_path / "asr_server.log", module=MODULE)
    try:
        assert server.health()["model"] == "whisper-base"
        shutil.copy(FIXTURES / "speech" / "hello.wav", tmp_path / "test.wav")
        body = plan_curl(server, tmp_path)
        # English speech forced to 中文: Whisper writes what it heard, the answer keeps 中文.
        assert body["success"] is True and body["language"] == "中文", body
        assert "alice" in body["text"].lower(), body
    finally:
        assert stop_server(server) == 0


def test_broken_fun_asr_nano_weights_stop_the_server_with_a_clear_error(tmp_path: Path) -> None:
    weights = tmp_path / "Fun-ASR-Nano-2512"
    weights.mkdir()
    (weights / "config.yaml").write_text("model: FunASRNano\n")
    (weights / "model.pt").write_bytes(b"\0")  # recognised as Fun-ASR-Nano, but no Qwen3-0.6B/
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", MODULE, "--model-path", str(weights),
                           "--port", str(free_port())], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0, done.stderr[-2000:]
    assert "Qwen3-0.6B/config.json is missing" in done.stderr, done.stderr[-2000:]
    assert time.monotonic() - started < 30  # the worker fails before importing funasr
