"""CRQ speech head (``audio_invert_tower``): one LM step -> G speech tokens at 25 Hz.

Each LM position is projected to G sub-positions (5 Hz -> 25 Hz). A small Qwen3 stack with its
own KV cache then runs over one 25 Hz stream whose input at position s is the projected row
plus the codebook embedding of the token chosen at s-1. The codebook is ``lm_head.weight``, the
same tensor as ``audio_tower.embed_tokens.weight``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from transformers.models.qwen3 import Qwen3Config  # transformers' lazy __init__ hides it from mypy

from .config import AudioConfig
from .kv_cache import PrefixKVCache
from .qwen3 import AttentionCache, Qwen3Trunk

# (raw fp32 logits [B, C], sub-step index) -> chosen tokens [B]
TokenChooser = Callable[[Tensor, int], Tensor]


class SpeechHead(nn.Module):
    """Speech refined head; the caller owns its cache and the previous-token feedback."""

    def __init__(self, audio: AudioConfig, crq: Qwen3Config) -> None:
        super().__init__()
        d, self.group = audio.output_dim, audio.group_size
        self.bos_id = audio.bos_token_id
        self.pre_matching = nn.Linear(d, self.group * d)
        self.crq_transformer = Qwen3Trunk(crq, with_embeddings=False)
        self.input_matching = nn.Linear(d, crq.hidden_size, bias=False)
        self.output_matching = nn.Linear(crq.hidden_size, d, bias=False)
        self.lm_head = nn.Linear(d, audio.codebook_size, bias=False)  # tied by the top model

    def codebook(self, tokens: Tensor) -> Tensor:
        return self.lm_head.weight[tokens]

    def upsample(self, x: Tensor) -> Tensor:
        """x: [B, n, D] (LM hidden + token embedding) -> [B, n*G, D], row G*p + j."""
        b, n, d = x.shape
        return self.pre_matching(x).reshape(b, n * self.group, d)

    def stream_logits(self, rows: Tensor, cache: AttentionCache) -> Tensor:
        """rows: [B, m, D] stream inputs -> fp32 logits [B, m, C]; advances the cache by m."""
        h = self.crq_transformer(self.input_matching(rows), cache)
        return self.lm_head(self.output_matching(h)).float()

    def generate_group(
        self, x: Tensor, cache: AttentionCache, prev_tokens: Tensor, choose: TokenChooser
    ) -> tuple[Tensor, Tensor]:
        """Run one LM step's worth of CRQ sub-steps.

        x: [B, n, D] for the n LM positions of this call (n > 1 only for a single-sequence
        prefill); prev_tokens: [B] token fed back into the first sub-step (BOS for a fresh
        stream). Returns (tokens [B, G], raw logits [B, G, C]). Only the last G-1 stream
        positions get a sampled token as feedback; earlier ones get ``prev_tokens``.
        """
        _b, n, _ = x.shape
        up = self.upsample(x)  # [B, nG, D]
        head = n * self.group - self.group + 1
        tokens: list[Tensor] = []
        logits: list[Tensor] = []
        feedback = self.codebook(prev_tokens)[:, None]  # [B, 1, D]
        for i in range(self.group):
            rows = up[:, :head] if i == 0 else up[:, head + i - 1 : head + i]
            step_logits = self.stream_logits(rows + feedback, cache)[:, -1]  # [B, C]
            tok = choose(step_logits, i)  # [B]
            tokens.append(tok)
            logits.append(step_logits)
            feedback = self.codebook(tok)[:, None]
        return torch.stack(tokens, dim=1), torch.stack(logits, dim=1)

    def parallel_logits(self, x: Tensor) -> Tensor:
        """Teacher-free parallel pass of the training path: [1, L, D] -> [1, L*G, C]."""
        assert x.shape[0] == 1, "parallel pass is defined per sequence here"
        cache = PrefixKVCache(len(self.crq_transformer.layers))
        return self.stream_logits(self.upsample(x), cache)

