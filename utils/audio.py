"""PCM helpers: dtype/shape normalisation, resampling, WAV I/O.

PCM inside this project is always mono float32 in [-1, 1], shape [T], with the sample
rate carried in the variable name (pcm_16k, pcm_24k).
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

MODEL_SAMPLE_RATE = 16_000  # what the speech models read
WIRE_SAMPLE_RATE = 24_000  # Opus on the WebSocket, CosyVoice3 output


def as_mono_float32(pcm: np.ndarray) -> np.ndarray:
    """[T] or [T, C] of any numeric dtype -> float32 [T] (channels averaged)."""
    pcm = np.asarray(pcm)
    if pcm.ndim not in (1, 2):
        raise ValueError(f"expected PCM of shape [T] or [T, C], got {pcm.shape}")
    if np.issubdtype(pcm.dtype, np.integer):
        pcm = pcm.astype(np.float32) / (float(np.iinfo(pcm.dtype).max) + 1.0)
    if pcm.ndim == 2:
        pcm = pcm.mean(axis=1)
    return np.ascontiguousarray(pcm, dtype=np.float32)


def resample(pcm: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """float32 [T] at from_rate -> float32 [T'] at to_rate (soxr, high quality)."""
    if from_rate == to_rate:
        return pcm
    return soxr.resample(pcm, from_rate, to_rate).astype(np.float32, copy=False)


def duration_s(pcm: np.ndarray, sample_rate: int) -> float:
    return len(pcm) / sample_rate


def decode_audio_file(data: bytes) -> tuple[np.ndarray, int]:
    """Any container soundfile reads (wav, flac, ogg, mp3) -> (float32 [T], rate)."""
    pcm, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    return as_mono_float32(pcm), int(rate)


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    pcm, rate = sf.read(str(path), dtype="float32", always_2d=False)
    return as_mono_float32(pcm), int(rate)


def wav_bytes(pcm: np.ndarray, sample_rate: int) -> bytes:
    """float32 [T] -> 16-bit PCM WAV file contents."""
    buf = io.BytesIO()
    sf.write(buf, pcm, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def write_wav_atomic(path: str | Path, pcm: np.ndarray, sample_rate: int) -> None:
    """Write a WAV so that readers never see a partial file (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(wav_bytes(pcm, sample_rate))
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
