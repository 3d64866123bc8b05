"""Paths, tolerances and small helpers for the CosyVoice3 golden-data tests."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "cosyvoice3"
MODEL_DIR = FIXTURES / "tiny_model"
CASES = FIXTURES / "cases"

# Tolerances from the golden README (observed upstream fp32 vs fp64 floors, with margin).
FLOW_ATOL = 2e-5
F0_ATOL = 5e-4
SOURCE_ATOL = 2e-4
STFT_ATOL = 2e-3
SPEECH_ATOL = 5e-4

# Enough fixed sine noise for every test (20 s); it is an exact prefix of upstream's 300 s.
SINE_SAMPLES = 480 * 1000


@cache
def case(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(CASES / f"{name}.safetensors"))


@cache
def manifest() -> dict[str, Any]:
    return json.loads((FIXTURES / "manifest.json").read_text(encoding="utf-8"))


def max_diff(got: torch.Tensor | np.ndarray, want: torch.Tensor) -> float:
    got_t = torch.as_tensor(np.asarray(got) if isinstance(got, np.ndarray) else got.detach().cpu())
    assert got_t.numel() == want.numel(), (tuple(got_t.shape), tuple(want.shape))
    return float((got_t.reshape(want.shape).float() - want.float()).abs().max())


def assert_close(got: torch.Tensor | np.ndarray, want: torch.Tensor, atol: float, what: str) -> None:
    diff = max_diff(got, want)
    assert diff <= atol, f"{what}: max |diff| {diff:.3g} > {atol:.1g}"
