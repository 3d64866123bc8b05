"""scripts/start_services.sh, verify_deployment.sh, stop_services.sh and start_vllm_services.sh
as an operator runs them: the plan's services on free ports, with their own RUN_DIR and LOG_DIR
(so a developer's running services in run/ are never touched), the plan's curl commands
against them, and nothing of theirs left once stop_services.sh returns."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ROOT, free_port
from web_demo.server.devices import nvidia_driver_present

pytestmark = pytest.mark.slow

WAV = ROOT / "tests" / "fixtures" / "speech" / "hello.wav"  # "Hello, my name is Alice."

# The deployment plan's curl commands, verbatim but for the port and the WAV's name.
PLAN_TRANSCRIBE = """curl -X POST http://localhost:8003/api/transcribe \\
    -F "audio=@test.wav" \\
    -F "language=中文" \\
    -F "hotwords=Fun-Audio-Chat,语音助手"
"""
PLAN_SYNTHESIZE = """curl -X POST http://localhost:8004/api/synthesize \\
    -H "Content-Type: application/json" \\
    -d '{"text": "你好，我是语音助手。", "speaker_id": "中文女"}' \\
    -o output.wav
"""
PLAN_HEALTH = "curl http://localhost:8003/health"


@dataclass
class Deployment:
    env: dict[str, str]
    run_dir: Path
    ports: dict[str, int]
    start: subprocess.CompletedProcess[str]
    work: Path

    def script(self, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(ROOT / "scripts" / args[0]), *args[1:]], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def health(self, name: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[name]}/health", timeout=10) as r:
            body: dict[str, Any] = json.loads(r.read())
        return body

    def plan_curl(self, command: str, plan_port: int, name: str) -> subprocess.CompletedProcess[str]:
        command = command.replace(f"localhost:{plan_port}", f"localhost:{self.ports[name]}")
        return subprocess.run(["bash", "-c", command], cwd=self.work, capture_output=True,
                              text=True, timeout=120)


def meta(run_dir: Path, name: str) -> dict[str, str]:
    lines = (run_dir / f"{name}.meta").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def service_processes(run_dir: Path) -> set[int]:
    """Every process of the recorded services: the servers, their descendants and everything
    whose environment carries a recorded FAC_SERVICE_ID."""
    ids = {meta(run_dir, p.stem)["service_id"] for p in run_dir.glob("*.meta")}
    leaders = {int(p.read_text()) for p in run_dir.glob("*.pid")}
    children: dict[int, set[int]] = {}
    found: set[int] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        children.setdefault(ppid, set()).add(int(proc.name))
        if any(entry == f"FAC_SERVICE_ID={i}".encode() for i in ids for entry in environ):
            found.add(int(proc.name))
    queue = list(leaders)
    while queue:
        pid = queue.pop()
        found.add(pid)
        queue.extend(children.get(pid, ()))
    return found


def alive(pid: int) -> bool:
    """A zombie (exited, not yet reaped by init) counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (apt-get install curl): verify_deployment.sh and the "
                    "plan's commands need it")
    tmp = tmp_path_factory.mktemp("services")
    ports = {"s2s": free_port(), "asr": free_port(), "tts": free_port()}
    run_dir = tmp / "run"
    env = {**os.environ, "RUN_DIR": str(run_dir), "LOG_DIR": str(tmp / "logs"), "HOST": "127.0.0.1",
           "S2S_PORT": str(ports["s2s"]), "ASR_PORT": str(ports["asr"]), "TTS_PORT": str(ports["tts"]),
           "STOP_TIMEOUT": "30"}
    work = tmp / "work"
    work.mkdir()
    shutil.copy(WAV, work / "test.wav")
    start = subprocess.run([str(ROOT / "scripts" / "start_services.sh"), "--with-tts", "--",
                            "--max-sessions", "7"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
    deployment = Deployment(env, run_dir, ports, start, work)
    try:
        yield deployment
    finally:
        if any(run_dir.glob("*.pid")):  # a test failed before test_stop_services: stop them here
            leftover = service_processes(run_dir)
            deployment.script("stop_services.sh", timeout=120)
            for pid in leftover:
                if alive(pid):
                    os.kill(pid, 9)


def test_start_services_starts_the_three_and_says_which_engines(deployment: Deployment) -> None:
    out = deployment.start.stdout
    assert deployment.start.returncode == 0, out + deployment.start.stderr
    for name in ("s2s", "asr", "tts"):
        assert f"[start] {name} started" in out
        assert re.search(rf"\[start\] {name} healthy after \d+ s", out)
        assert (deployment.run_dir / f"{name}.pid").is_file()
        assert (Path(deployment.env["LOG_DIR"]) / f"{name}.log").is_file()
        # its own session: the PID leads a process group of its own
        pid = int((deployment.run_dir / f"{name}.pid").read_text())
        assert os.getpgid(pid) == pid
    # On this machine (no weights, no GPU) every service is a CPU stand-in, and says so.
    assert re.search(r"s2s .*engine: CPU STAND-IN cascade .*NOT Fun-Audio-Chat", out)
    assert re.search(r"asr .*engine: CPU STAND-IN faster-whisper whisper-base, NOT Fun-ASR-Nano", out)
    assert re.search(r"tts .*engine: CPU STAND-IN espeak-ng, NOT CosyVoice3", out)
    assert f"ws://127.0.0.1:{deployment.ports['s2s']}/api/chat" in out
    assert f"http://127.0.0.1:{deployment.ports['asr']}/api/transcribe" in out
    assert f"http://127.0.0.1:{deployment.ports['tts']}/api/synthesize" in out
    # arguments after -- went to the S2S server
    assert deployment.health("s2s")["sessions"]["max"] == 7
    assert deployment.health("tts")["vllm_enabled"] is False


def test_start_services_again_says_already_running(deployment: Deployment) -> None:
    pids = {p.stem: p.read_text() for p in deployment.run_dir.glob("*.pid")}
    again = deployment.script("start_services.sh", "--with-tts")
    assert again.returncode == 0, again.stdout + again.stderr
    for name, pid in pids.items():
        assert f"[start] {name} already running (pid {pid.strip()}" in again.stdout
    assert {p.stem: p.read_text() for p in deployment.run_dir.glob("*.pid")} == pids


def test_verify_deployment_passes_and_prints_the_table(deployment: Deployment) -> None:
    verify = deployment.script("verify_deployment.sh")
    out = verify.stdout
    assert verify.returncode == 0, out + verify.stderr
    table = out[out.index("=== deployment check ==="):]
    assert re.search(r"^check +service +result +detail$", table, re.M)
    assert re.search(r"^gpu +- +INFO +none \(no nvidia-smi\)", table, re.M)
    for name in ("s2s", "asr", "tts"):
        for check in ("port", "process", "health", "request"):
            assert re.search(rf"^{check} +{name} +PASS ", table, re.M), f"{check} {name}:\n{table}"
    assert re.search(r"^request +s2s +PASS +WebSocket turn: reply text: .*Alice", table, re.M)
    assert re.search(r"^request +asr +PASS +POST /api/transcribe \(language=中文\): \".*Alice", table, re.M)
    assert re.search(r"^request +tts +PASS +POST /api/synthesize \(speaker_id=中文女\)", table, re.M)
    assert "=== all checks passed ===" in out


def test_the_plans_curl_commands(deployment: Deployment) -> None:
    transcribe = deployment.plan_curl(PLAN_TRANSCRIBE, 8003, "asr")
    assert transcribe.returncode == 0, transcribe.stderr
    body = json.loads(transcribe.stdout)
    assert body["success"] is True and body["language"] == "中文"
    assert "alice" in body["text"].lower()

    synthesize = deployment.plan_curl(PLAN_SYNTHESIZE, 8004, "tts")
    assert synthesize.returncode == 0, synthesize.stderr
    answer = json.loads((deployment.work / "output.wav").read_text())  # -o of the JSON answer
    assert answer["success"] is True and answer["sample_rate"] == 24000 and answer["duration"] > 0.5
    assert base64.b64decode(answer["audio"])[:4] == b"RIFF"

    health = deployment.plan_curl(PLAN_HEALTH, 8003, "asr")
    assert json.loads(health.stdout)["status"] == "healthy"


def test_start_services_fails_loudly_on_busy_ports_and_a_refused_use_vllm(
        deployment: Deployment, tmp_path: Path) -> None:
    """Another RUN_DIR on the running deployment's S2S and ASR ports: those two are not started
    (their ports belong to processes this RUN_DIR did not start); --use-vllm without a GPU or a
    CosyVoice3 model: the TTS service refuses, and the script shows why and exits 1."""
    env = {**deployment.env, "RUN_DIR": str(tmp_path / "run"), "LOG_DIR": str(tmp_path / "logs"),
           "TTS_PORT": str(free_port())}
    result = subprocess.run([str(ROOT / "scripts" / "start_services.sh"), "--with-tts", "--use-vllm"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    for name in ("s2s", "asr"):
        assert f"[start] {name} NOT started: port {deployment.ports[name]} is already in use" in result.stderr
    assert "[start] tts EXITED" in result.stderr
    assert "--use-vllm needs a CosyVoice3 model" in result.stderr
    assert "[start] FAILED" in result.stderr
    stop = subprocess.run([str(ROOT / "scripts" / "stop_services.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert "[stop] tts was not running" in stop.stdout
    assert {p.stem for p in deployment.run_dir.glob("*.pid")} == {"s2s", "asr", "tts"}  # untouched


def test_verify_deployment_fails_on_a_dead_service(tmp_path: Path) -> None:
    """A recorded service that is not running: the process, port and health rows fail, exit 1."""
    fake_run = tmp_path / "run"
    fake_run.mkdir()
    port = free_port()
    (fake_run / "asr.pid").write_text("999999999\n")
    (fake_run / "asr.meta").write_text(f"name=asr\nkind=asr\nport={port}\npid=999999999\n"
                                       f"start_time=1\nservice_id=none\nlog={tmp_path}/asr.log\n")
    verify = subprocess.run([str(ROOT / "scripts" / "verify_deployment.sh")], cwd=ROOT,
                            env={**os.environ, "RUN_DIR": str(fake_run)},
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 1
    for check in ("port", "process", "health", "request"):
        assert re.search(rf"^{check} +asr +FAIL ", verify.stdout, re.M), verify.stdout
    assert "check(s) FAILED" in verify.stdout


def test_stop_services_stops_every_process_they_started(deployment: Deployment) -> None:
    processes = service_processes(deployment.run_dir)
    # each server and its worker processes (ASR and TTS: one worker each; S2S: two)
    assert len(processes) >= 7, processes
    stop = deployment.script("stop_services.sh", timeout=120)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    for name in ("s2s", "asr", "tts"):
        assert f"[stop] {name} stopped" in stop.stdout
    assert not [pid for pid in processes if alive(pid)], stop.stdout
    assert not list(deployment.run_dir.glob("*.pid"))
    assert not list(deployment.run_dir.glob("*.meta"))
    for port in deployment.ports.values():
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
    again = deployment.script("stop_services.sh")
    assert again.returncode == 0 and "nothing recorded" in again.stdout


@pytest.mark.parametrize("args, message", [
    (["1", "cpu", "extra"], "unexpected argument 'extra'"),
    (["--use-vllm"], "--use-vllm is the TTS service's: use it with --with-tts"),
    (["x"], "TTS_GPU must be a GPU index"),
])
def test_start_services_refuses_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    env = {**os.environ, "RUN_DIR": str(tmp_path / "run"), "LOG_DIR": str(tmp_path / "logs")}
    result = subprocess.run([str(ROOT / "scripts" / "start_services.sh"), *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(nvidia_driver_present(), reason="this machine has a GPU")
def test_start_vllm_services_says_what_is_missing(tmp_path: Path) -> None:
    env = {**os.environ, "RUN_DIR": str(tmp_path / "run"), "LOG_DIR": str(tmp_path / "logs"),
           "ASR_PORT": str(free_port()), "S2S_PORT": str(free_port()), "TTS_PORT": str(free_port())}
    result = subprocess.run([str(ROOT / "scripts" / "start_vllm_services.sh")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    err = result.stderr
    assert "cannot start the all-vLLM services; this machine is missing:" in err
    assert "a CUDA GPU: no NVIDIA driver" in err
    assert "the vllm command (vllm serve)" in err or "VLLM_BIN" in err
    assert "vllm in .venv" in err
    assert "Fun-Audio-Chat-8B weights at pretrained_models/Fun-Audio-Chat-8B" in err
    assert "CosyVoice3 weights at pretrained_models/Fun-CosyVoice3-0.5B-2512" in err
    assert "nothing was started" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "logs").exists()
