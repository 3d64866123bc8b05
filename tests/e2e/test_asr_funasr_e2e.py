"""The ASR server as the deployment plan starts it, on a Fun-ASR-Nano directory (tiny random
weights in the release layout), with every network route leading into a trap.

The text is random; what is real is the load path (funasr's AutoModel on a local directory,
offline), the worker, the device report and both HTTP APIs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.e2e.conftest import RunningServer, start_server, stop_server
from tests.fun_asr_nano_tiny import build_fun_asr_nano_tiny
from tests.helpers import FIXTURES
from utils.audio import read_wav
from web_demo.server.devices import nvidia_driver_present

pytestmark = pytest.mark.slow
logger = logging.getLogger(__name__)

MODULE = "web_demo.server.asr_server"
MODEL_ID = "Fun-ASR-Nano-2512"
MAX_LOAD_S = 60.0  # start to healthy: import funasr (~10 s on 2 cores) + spawn + load


class NetworkTrap:
    """A local port that every proxy, hub and index variable points at: each connection to it is
    recorded and closed at once, so a network attempt fails fast and the test sees it."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.attempts: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:  # closed
                return
            with conn:
                conn.settimeout(1.0)
                try:
                    self.attempts.append(conn.recv(200))
                except OSError:
                    self.attempts.append(b"")

    def env(self) -> dict[str, str]:
        host = self.url.removeprefix("http://")
        return {"HTTP_PROXY": self.url, "HTTPS_PROXY": self.url, "ALL_PROXY": self.url,
                "http_proxy": self.url, "https_proxy": self.url, "all_proxy": self.url,
                "NO_PROXY": "", "no_proxy": "", "HF_ENDPOINT": self.url, "HF_HUB_OFFLINE": "1",
                "MODELSCOPE_DOMAIN": host, "PIP_INDEX_URL": self.url}

    def close(self) -> None:
        self._sock.close()


@pytest.fixture(scope="module")
def trap() -> Iterator[NetworkTrap]:
    network = NetworkTrap()
    # The trap works: a download in a process with its environment fails at once and is seen.
    fetch = "import urllib.request; urllib.request.urlopen('https://huggingface.co', timeout=30)"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", fetch], env={**os.environ, **network.env()},
                          capture_output=True, timeout=60)
    assert done.returncode != 0 and time.monotonic() - started < 10
    assert network.attempts and network.attempts[0].startswith(b"CONNECT huggingface.co:443")
    network.attempts.clear()
    yield network
    network.close()


@pytest.fixture(scope="module")
def nano_server(tmp_path_factory: pytest.TempPathFactory, trap: NetworkTrap) -> Iterator[RunningServer]:
    """The plan's command (--device cuda:0) on the tiny directory, network unreachable."""
    root = tmp_path_factory.mktemp("asr")
    weights = build_fun_asr_nano_tiny(root / MODEL_ID)
    started = time.monotonic()
    server = start_server(["--model-path", str(weights), "--device", "cuda:0"], root / "asr_server.log",
                          ready_timeout_s=MAX_LOAD_S, module=MODULE, env=trap.env())
    load_s = time.monotonic() - started
    logger.warning("Fun-ASR-Nano (tiny) asr_server: start to healthy in %.1f s", load_s)
    assert load_s < MAX_LOAD_S
    yield server
    assert stop_server(server) == 0


def post_form(server: RunningServer, path: str, fields: dict[str, str], audio: Path) -> tuple[int, dict]:
    """A multipart POST with curl (as the plan does): the status and the JSON body."""
    command = ["curl", "-s", "-X", "POST", f"http://127.0.0.1:{server.port}{path}",
               "-F", f"audio=@{audio}", "-w", "\n%{http_code}"]
    for name, value in fields.items():
        command += ["-F", f"{name}={value}"]
    done = subprocess.run(command, capture_output=True, timeout=60, check=True, text=True)
    body, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(body)


def test_health_names_the_model_and_the_device_actually_used(nano_server: RunningServer) -> None:
    health = nano_server.health()
    assert (health["status"], health["model"]) == ("healthy", MODEL_ID), health
    log = nano_server.log.read_text()
    assert f"engine: funasr {MODEL_ID} (REAL MODEL from" in log
    if not nvidia_driver_present():  # cuda:0 was asked for; the weights are on the CPU
        assert health["device"] == "cpu" and "(asked cuda:0: no GPU)" in log


def test_the_plan_endpoint_transcribes(nano_server: RunningServer, tmp_path: Path) -> None:
    audio = shutil.copy(FIXTURES / "speech" / "hello.wav", tmp_path / "test.wav")
    started = time.monotonic()
    status, body = post_form(nano_server, "/api/transcribe",
                             {"language": "中文", "hotwords": "a,b"}, audio)
    logger.warning("POST /api/transcribe (2.2 s of audio) in %.2f s", time.monotonic() - started)
    assert status == 200 and set(body) == {"text", "language", "success"}, body
    assert body["success"] is True and body["language"] == "中文" and isinstance(body["text"], str)


def test_a_language_the_model_does_not_take_is_a_400(nano_server: RunningServer, tmp_path: Path) -> None:
    audio = shutil.copy(FIXTURES / "speech" / "hello.wav", tmp_path / "test.wav")
    status, body = post_form(nano_server, "/api/transcribe", {"language": "韩文"}, audio)
    assert status == 400 and body["success"] is False and body["error"]["param"] == "language", body
    assert "'韩文'" in body["error"]["message"] and "zh, en, ja" in body["error"]["message"]


def test_the_openai_endpoint_transcribes(nano_server: RunningServer) -> None:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{nano_server.port}/v1", api_key="-",
                           max_retries=0, timeout=60)
    with (FIXTURES / "speech" / "fox.wav").open("rb") as audio:
        t = client.audio.transcriptions.create(model=MODEL_ID, file=audio, language="en",
                                               response_format="json")
    assert isinstance(t.text, str)
    with (FIXTURES / "speech" / "fox.wav").open("rb") as audio:
        verbose = client.audio.transcriptions.create(model="whisper-1", file=audio, language="zh",
                                                     response_format="verbose_json")
    pcm, rate = read_wav(FIXTURES / "speech" / "fox.wav")
    assert verbose.language == "chinese" and verbose.duration == pytest.approx(len(pcm) / rate, abs=0.01)
    # One segment spanning the audio (none if the random weights said nothing).
    spans = [(s.start, s.end) for s in verbose.segments or []]
    assert spans in ([], [(0.0, pytest.approx(verbose.duration, abs=0.01))]), spans


def test_nothing_reached_for_the_network(nano_server: RunningServer, trap: NetworkTrap) -> None:
    nano_server.health()
    assert trap.attempts == []
