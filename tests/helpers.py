"""Test inputs read from tests/fixtures (the /api/chat client itself is web_demo.chat_client)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from utils.audio import WIRE_SAMPLE_RATE, read_wav, resample
from utils.opus import encode_browser_pages

FIXTURES = Path(__file__).parent / "fixtures"


def speech_24k(name: str) -> np.ndarray:
    """tests/fixtures/speech/<name>.wav as float32 [T] at 24 kHz."""
    pcm, rate = read_wav(FIXTURES / "speech" / f"{name}.wav")
    return resample(pcm, rate, WIRE_SAMPLE_RATE)


def tone_pages(seconds: float, freq: float = 440.0) -> list[bytes]:
    """A sine tone as the Ogg pages a browser would send."""
    t = np.arange(int(seconds * WIRE_SAMPLE_RATE)) / WIRE_SAMPLE_RATE
    return encode_browser_pages((0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32))
