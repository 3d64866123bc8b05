"""Every CosyVoice3 TTS golden test runs with the goldens' thread count."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)  # the goldens' thread count
