"""Shared fixtures: the tiny golden model and the manifest."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from tests.fac_golden import FIXTURES, MODEL_DIR, TOKENIZER_DIR
from utils.funaudiochat import FunAudioChatRuntime, load_model


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def runtime() -> FunAudioChatRuntime:
    return load_model(MODEL_DIR, tokenizer_path=TOKENIZER_DIR, device="cpu")


@pytest.fixture(scope="session")
def manifest() -> dict[str, Any]:
    return json.loads((FIXTURES / "manifest.json").read_text())
