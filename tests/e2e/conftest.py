from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RunningServer:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def health(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
            return json.loads(r.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(args: list[str], log: Path, ready_timeout_s: float = 120.0,
                 module: str = "web_demo.server.server",
                 env: dict[str, str] | None = None, port: int | None = None) -> RunningServer:
    """Starts `python -m MODULE` (the S2S server by default) and waits until /health answers;
    `env` adds to (or overrides) this process's environment. `port`: a fixed one (a restart
    on the same port), else a free one. The log is appended to, so a restart keeps the first
    run's lines."""
    port = port or free_port()
    out = log.open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", module, "--host", "127.0.0.1",
         "--port", str(port), *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})})
    server = RunningServer(port, process, log)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text()[-3000:]}")
        try:
            server.health()
            return server
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"server not ready in {ready_timeout_s} s:\n{log.read_text()[-3000:]}")


def stop_server(server: RunningServer) -> int:
    server.process.send_signal(signal.SIGINT)
    try:
        return server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        raise


@pytest.fixture(scope="module")
def cascade_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    server = start_server(["--engine", "cascade", "--asr-language", "en"], log)
    yield server
    stop_server(server)
