"""Fixtures for the CosyVoice3 token2wav tests: one tiny model per session."""

from __future__ import annotations

import pytest
import torch

from tests.cv3_golden import MODEL_DIR, SINE_SAMPLES, case
from utils.cosyvoice3 import Token2Wav


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def model() -> Token2Wav:
    return Token2Wav.from_model_dir(MODEL_DIR, sine_samples=SINE_SAMPLES)


@pytest.fixture(scope="session")
def tokens() -> list[int]:
    return case("inputs")["speech_token"][0].tolist()


@pytest.fixture(scope="session")
def embedding() -> torch.Tensor:
    return case("inputs")["embedding"]
