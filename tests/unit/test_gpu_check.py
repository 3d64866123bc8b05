"""scripts/gpu_check.sh refuses clearly without CUDA; its Python half (scripts/gpu_check.py)
works on CPU with the tiny models: parity in float32, the random checkpoint writers, and the
real-time judgement of a session's reply pages."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from scripts import gpu_check
from utils.cosyvoice3 import Token2Wav
from utils.funaudiochat import load_model
from utils.funaudiochat.loading import read_state_dict

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_fails_clearly_without_cuda(tmp_path: Path) -> None:
    run = subprocess.run([str(SCRIPT)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "GPU_CHECK_OUT": str(tmp_path / "out")})
    assert run.returncode == 3, (run.stdout, run.stderr)
    assert "gpu_check: FAIL: no CUDA GPU is visible (torch " in run.stderr
    assert "nothing was run" in run.stderr
    assert not (tmp_path / "out").exists()


def test_fails_clearly_when_not_set_up(tmp_path: Path) -> None:
    run = subprocess.run([str(SCRIPT)], cwd=ROOT, capture_output=True, text=True, timeout=30,
                         env={**os.environ, "PYTHON": str(tmp_path / "no-python")})
    assert run.returncode == 2
    assert "set up first: GPU=1 scripts/setup.sh" in run.stderr


def test_judge_real_time() -> None:
    # 40 ms pages arriving every 40 ms: each comes 0.2 s (the playback buffer) before its slot
    times = [i * 0.04 for i in range(50)]
    audio_s, late = gpu_check.judge(times, [0.04] * 50)
    assert audio_s == pytest.approx(2.0) and late == pytest.approx(-0.2)
    # pages that come slower than they play fall behind
    _, late = gpu_check.judge([i * 0.05 for i in range(50)], [0.04] * 50)
    assert late is not None and late > 0
    # a stream that stops while the listener still waits is late by the silence
    _, late = gpu_check.judge(times, [0.04] * 50, watched_until=times[-1] + 1.0)
    assert late == pytest.approx(1.0 - 0.2 - 0.04, abs=1e-9)
    assert gpu_check.judge([], []) == (0.0, None)
    ok = gpu_check.SessionResult(0, 0.5, 8.0, -0.1)
    assert ok.real_time
    assert not gpu_check.SessionResult(0, 0.5, 8.0, 0.3).real_time
    assert not gpu_check.SessionResult(0, None, 0.0, None, "ChatError: closed").real_time


def test_parity_on_cpu_float32() -> None:
    checks = gpu_check.run_parity(torch.device("cpu"), [torch.float32])
    assert len(checks) == 9
    assert [c.what for c in checks if not c.ok] == []


def test_random_checkpoints_load_like_released_ones(tmp_path: Path) -> None:
    fixtures = ROOT / "tests" / "fixtures"
    fac = gpu_check.write_fun_audio_chat(fixtures / "funaudiochat/model/config.json", tmp_path / "fac",
                                         torch.device("cpu"))
    assert (fac / "model.safetensors.index.json").is_file() and (fac / "tokenizer.json").is_file()
    runtime = load_model(fac, device="cpu")
    assert runtime.tokenizer is not None
    assert set(read_state_dict(fac)) <= set(runtime.model.state_dict())
    cv3 = gpu_check.write_cosyvoice3(fixtures / "cosyvoice3/config/tiny_flow_config.json",
                                     fixtures / "cosyvoice3/config/tiny_hift_config.json", tmp_path / "cv3")
    vocoder = Token2Wav.from_model_dir(cv3)
    assert vocoder.sample_rate == 24000
