"""TempoStretch: the speaking rate changes, the pitch does not, streamed in any chunking."""

from __future__ import annotations

import numpy as np
import pytest

from web_demo.server.tempo import TempoStretch, atempo_factors

RATE = 24000


def sine(seconds: float, hz: float = 440.0) -> np.ndarray:
    return np.sin(2 * np.pi * hz * np.arange(int(seconds * RATE)) / RATE).astype(np.float32)


def dominant_hz(pcm: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return float(np.argmax(spectrum) * RATE / len(pcm))


@pytest.mark.parametrize("speed", [0.25, 0.5, 0.8, 1.5, 2.0, 4.0])
def test_length_scales_and_pitch_stays(speed: float) -> None:
    pcm = sine(2.0)
    stretch = TempoStretch(RATE, speed)
    pieces = [stretch.process(pcm[i:i + 3001]) for i in range(0, len(pcm), 3001)]
    out = np.concatenate([*pieces, stretch.flush()])
    assert abs(len(out) / RATE - 2.0 / speed) < 0.06, (len(out) / RATE, 2.0 / speed)
    assert abs(dominant_hz(out) - 440.0) < 5.0
    assert sum(len(p) for p in pieces[:-1]) > 0  # audio comes out before the end


def test_factor_chain_stays_in_atempo_range() -> None:
    assert atempo_factors(0.25) == [0.5, 0.5]
    assert np.prod(atempo_factors(0.3)) == pytest.approx(0.3)
    assert all(f >= 0.5 for f in atempo_factors(0.26))
    assert atempo_factors(3.0) == [3.0]


def test_empty_chunk_is_nothing() -> None:
    stretch = TempoStretch(RATE, 2.0)
    assert stretch.process(np.zeros(0, np.float32)).size == 0
    assert stretch.flush().size == 0
