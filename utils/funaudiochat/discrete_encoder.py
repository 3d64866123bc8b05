"""Discrete speech encoder (``audio_tower``): 5 speech frames -> one LM-width row.

It also holds the speech codebook ``embed_tokens``, which the CRQ head shares as its output
matrix, and merges the continuous encoder's output into the rows it produces.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .config import AudioConfig


class DiscreteAudioEncoder(nn.Module):
    """Group-mean of codebook embeddings (or of continuous features), then a projection."""

    def __init__(self, cfg: AudioConfig) -> None:
        super().__init__()
        self.group = cfg.group_size
        self.pad_id = cfg.pad_token_id
        self.replace = cfg.continuous_features_mode == "replace"
        d = cfg.output_dim
        self.embed_tokens = nn.Embedding(cfg.codebook_size, d, padding_idx=cfg.pad_token_id)
        self.output_matching = nn.Linear(d, d, bias=False)
        self.continual_output_matching = nn.Linear(d, d, bias=False)

    def _group_mean(self, x: Tensor) -> Tensor:
        a, s, d = x.shape  # [A, S, D]
        assert s % self.group == 0, (s, self.group)
        return x.view(a, s // self.group, self.group, d).mean(dim=2)  # [A, S/G, D]

    def embed_groups(self, speech_ids: Tensor) -> Tensor:
        """speech_ids: [A, S] (S a multiple of G) -> [A, S/G, D]."""
        return self.output_matching(self._group_mean(self.embed_tokens(speech_ids)))

    def forward(self, speech_ids: Tensor, continuous: Tensor | None = None,
                exists: Tensor | None = None) -> Tensor:
        """Rows for every group of every audio: [A, S/G, D].

        continuous: [A, S, D] from the continuous encoder (its zero rows past an audio's end take
        part in the mean, as upstream does); exists: bool [A], audios that have features.
        """
        rows = self.embed_groups(speech_ids)
        if continuous is None:
            return rows
        assert continuous.shape[:2] == speech_ids.shape, (continuous.shape, speech_ids.shape)
        cont = self.continual_output_matching(self._group_mean(continuous))
        mask = torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device) if exists is None else exists
        merged = rows.clone()
        merged[mask] = cont[mask] if self.replace else rows[mask] + cont[mask]
        return merged


def placeholder_count(frames_25hz: int, group: int = 5) -> int:
    """Number of ``<|AUDIO|>`` tokens (LM positions) for an audio of ``frames_25hz`` frames."""
    return math.ceil(frames_25hz / group)
