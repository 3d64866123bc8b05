"""Audio front end: 16 kHz waveforms -> Whisper log-mel features and 25 Hz frame counts.

The log-mel is ``transformers``' ``WhisperFeatureExtractor`` (torch STFT path), which is what
upstream's processor runs; only its settings come from the checkpoint.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from transformers import WhisperFeatureExtractor

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
SPEECH_FRAME_RATE = 25  # speech tokens per second
MEL_HOP = 160  # samples per mel frame at 16 kHz


def frames_25hz(num_samples: int, sample_rate: int = SAMPLE_RATE, *, rounding: str = "floor") -> int:
    """Speech frames for an audio: ``floor`` as for in-memory waveforms (infer_s2s.py),
    ``ceil`` as upstream's web server counts its recordings."""
    duration = num_samples / sample_rate
    if rounding == "floor":
        return int(duration * SPEECH_FRAME_RATE)
    if rounding == "ceil":
        return math.ceil(duration * SPEECH_FRAME_RATE)
    raise ValueError(f"rounding must be 'floor' or 'ceil', not {rounding!r}")


class LogMelFrontend:
    """Batches waveforms into padded log-mel features and their valid frame counts."""

    def __init__(self, extractor: WhisperFeatureExtractor) -> None:
        if extractor.sampling_rate != SAMPLE_RATE:
            raise ValueError(f"feature extractor expects {extractor.sampling_rate} Hz, "
                             f"runtime feeds {SAMPLE_RATE}")
        self.extractor = extractor

    @classmethod
    def from_dir(cls, path: str | Path | None, *, num_mel_bins: int) -> LogMelFrontend:
        """Use ``preprocessor_config.json`` from ``path`` when present, else Whisper defaults."""
        if path is not None and (Path(path) / "preprocessor_config.json").is_file():
            extractor = WhisperFeatureExtractor.from_pretrained(str(path))
        else:
            logger.info("no preprocessor_config.json in %s; using Whisper defaults", path)
            extractor = WhisperFeatureExtractor(feature_size=num_mel_bins)
        if extractor.feature_size != num_mel_bins:
            raise ValueError(f"feature extractor has {extractor.feature_size} mels, "
                             f"model wants {num_mel_bins}")
        return cls(extractor)

    def __call__(self, waveforms: list[np.ndarray]) -> tuple[Tensor, list[int]]:
        """waveforms: float32 [T] at 16 kHz each -> (features [A, mels, 3000], valid mel frames)."""
        for w in waveforms:
            if w.ndim != 1:
                raise ValueError(f"expected mono 1-D waveforms, got shape {w.shape}")
        out = self.extractor(
            [np.asarray(w, dtype=np.float32) for w in waveforms],
            sampling_rate=SAMPLE_RATE,
            return_attention_mask=True,
            return_tensors="pt",
        )
        features = out["input_features"].to(torch.float32)  # [A, mels, 3000]
        mel_lens = [int(x) for x in out["attention_mask"].sum(-1)]
        return features, mel_lens
