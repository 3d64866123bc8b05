"""The real server as a subprocess with the CPU cascade engine, driven like a browser.

Speech synthesised offline (flite) goes in as Ogg/Opus (20 ms frames, 2 per page) through
scripts/test_deployment.py; the reply audio, decoded and transcribed, must contain the words
that were spoken.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, RunningServer, start_server, stop_server

pytestmark = pytest.mark.slow
SPEECH = ROOT / "tests" / "fixtures" / "speech"


def transcribe(wav: Path) -> str:
    from faster_whisper import WhisperModel

    from web_demo.server.workers.asr_worker import default_whisper_dir

    model = WhisperModel(default_whisper_dir(), device="cpu", compute_type="int8", cpu_threads=2)
    segments, _ = model.transcribe(str(wav), beam_size=1, language="en")
    return " ".join(segment.text for segment in segments)


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


@pytest.mark.parametrize("name,spoken", [
    ("fox", {"quick", "brown", "fox", "lazy"}),
    ("weather", {"weather", "paris", "tomorrow"}),
])
def test_spoken_words_come_back_in_the_reply_audio(
        cascade_server: RunningServer, tmp_path: Path, name: str, spoken: set[str]) -> None:
    out = tmp_path / "reply.wav"
    result = subprocess.run(
        [sys.executable, "scripts/test_deployment.py", "--host", "127.0.0.1",
         "--port", str(cascade_server.port), "--wav", str(SPEECH / f"{name}.wav"),
         "--out", str(out), "--fast"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "first audio:" in result.stdout
    heard_back = words(transcribe(out))
    assert len(spoken & heard_back) >= len(spoken) - 1, (spoken, heard_back)


def test_deployment_script_fails_loudly_without_a_server(tmp_path: Path) -> None:
    from tests.e2e.conftest import free_port

    result = subprocess.run(
        [sys.executable, "scripts/test_deployment.py", "--port", str(free_port()),
         "--wav", str(SPEECH / "hello.wav"), "--out", str(tmp_path / "r.wav")],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "FAIL" in result.stderr


def test_shutdown_stops_the_workers(tmp_path: Path) -> None:
    server = start_server(["--engine", "cascade"], tmp_path / "server.log")
    workers = server.health()["workers"]
    pids = [w["pid"] for w in workers.values()]
    assert all(w["alive"] for w in workers.values())
    assert stop_server(server) == 0
    for pid in pids:
        proc = Path(f"/proc/{pid}")
        assert not os.path.exists(proc) or "zombie" in (proc / "status").read_text().lower()
