"""A Realtime API connection's appended audio as the sessions hear it: float32 at 16 kHz.

PCM16 arrives at 24 kHz, G.711 at 8 kHz; either goes through one soxr stream to the model's
16 kHz, so that appends join without a seam. That stream holds back its last ~30 ms until it is flushed:
a turn (or segment) that ends flushes it, and the next one starts a fresh stream.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import soxr

from utils.audio import MODEL_SAMPLE_RATE
from web_demo.server.realtime.audio_formats import AudioFormat, decode_audio


class AppendedAudio:
    """One connection's input converter; owned by its wire or transcription session."""

    def __init__(self, fmt: AudioFormat = AudioFormat.PCM16) -> None:
        self._format = fmt
        self._resampler: Any = None  # soxr.ResampleStream, made by the first append

    def set_format(self, fmt: AudioFormat) -> None:
        if fmt != self._format:
            self._format, self._resampler = fmt, None

    def convert(self, data: bytes) -> np.ndarray:
        """One append's bytes (in the current format) -> float32 [T] at 16 kHz."""
        pcm = decode_audio(data, self._format)
        if self._resampler is None:
            self._resampler = soxr.ResampleStream(self._format.sample_rate, MODEL_SAMPLE_RATE, 1,
                                                  dtype="float32")
        out: np.ndarray = self._resampler.resample_chunk(pcm)
        return out

    def flush(self) -> np.ndarray:
        """What the resampler still holds (float32 [T] at 16 kHz, often empty); the next append
        starts a fresh stream."""
        resampler, self._resampler = self._resampler, None
        if resampler is None:
            return np.zeros(0, np.float32)
        tail: np.ndarray = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
        return tail
