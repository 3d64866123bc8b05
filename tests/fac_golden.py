"""Paths and helpers for the Fun-Audio-Chat tests (golden data copied under tests/fixtures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "funaudiochat"
MODEL_DIR = FIXTURES / "model"
TOKENIZER_DIR = FIXTURES / "tokenizers" / "substitute_text_tokenizer"


def case(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "cases" / f"{name}.safetensors"))


def wav(name: str) -> np.ndarray:
    data, sr = sf.read(str(FIXTURES / "audio" / name), dtype="float32")
    assert sr == 16000
    return data


def assert_close(got: torch.Tensor, want: torch.Tensor, tol: float, what: str) -> float:
    """Compare with atol = rtol = tol; returns the max abs error for the record."""
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err = (got.float() - want.float()).abs().max().item() if got.numel() else 0.0
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol, msg=lambda m: f"{what}: {m}")
    return err
