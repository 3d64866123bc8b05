"""Paths, tolerances and loaders for the CosyVoice3 text -> speech-token golden tests
(tests/fixtures/cosyvoice3_tts; its README.md has how they were made and the tolerances)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from utils.cosyvoice3.llm import CosyVoice3LM
from utils.cosyvoice3.llm_loading import load_llm_files

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "cosyvoice3_tts"
CASES = FIXTURES / "cases"
TOKEN2WAV_MODEL_DIR = Path(__file__).resolve().parent / "fixtures" / "cosyvoice3" / "tiny_model"
REPO = Path(__file__).resolve().parent.parent
PROMPT_WAV = FIXTURES / "audio" / "prompt_24k.wav"

# The README's suggested tolerances (observed floors with margin); ids, strings and tokens: exact.
HIDDEN_ATOL = 2e-5
LOGP_ATOL = 1e-4
PROMPT_MEL_ATOL = 2e-5
PROMPT_MEL_UPSAMPLED_ATOL = 2e-3
WHISPER_MEL_ATOL = 1e-4
FBANK_ATOL = 5e-4
RESAMPLE_ATOL = 1e-6
WAVE_ATOL = 5e-4


@cache
def case(name: str) -> dict[str, torch.Tensor]:
    """Every tensor of cases/<name>.safetensors."""
    with safe_open(str(CASES / f"{name}.safetensors"), framework="pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118  (safe_open is no dict)


@cache
def case_metadata(name: str) -> dict[str, str]:
    """The case file's header metadata (its description and notes)."""
    with safe_open(str(CASES / f"{name}.safetensors"), framework="pt") as f:
        return dict(f.metadata() or {})


@cache
def manifest() -> dict[str, Any]:
    return dict(json.loads((FIXTURES / "manifest.json").read_text(encoding="utf-8")))


# The texts each mode was given (text_frontend's notes), for the end-to-end cases.
MODE_INPUTS: dict[str, str] = json.loads(case_metadata("text_frontend")["notes"])["mode_inputs"]


@cache
def tiny_lm() -> CosyVoice3LM:
    """The tiny LLM of the goldens (sampler top_k 25), loaded once per test process."""
    return load_llm_files(FIXTURES / "config" / "tiny_llm_config.json",
                          FIXTURES / "weights" / "tiny_llm.safetensors")


def max_diff(got: torch.Tensor | np.ndarray, want: torch.Tensor | np.ndarray) -> float:
    a = torch.as_tensor(np.asarray(got, dtype=np.float64) if isinstance(got, np.ndarray) else got.double())
    b = torch.as_tensor(np.asarray(want, dtype=np.float64) if isinstance(want, np.ndarray) else want.double())
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max()) if a.numel() else 0.0
