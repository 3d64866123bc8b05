"""Replies for the multi-stream token2wav tests (batched and static): what each stream brings
and when, so a test can run the same plans alone and side by side."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Plan:
    """One reply: its tokens, speaker, when it joins, how many tokens each round brings."""

    n_tokens: int
    start: int  # round it joins
    push: int  # tokens per round
    seed: int
    cancel_at: int | None = None  # round after which it is dropped without finalize
    finish_alone: bool = False  # finalize in a round of its own, with no tokens (as the worker does)

    def tokens(self) -> list[int]:
        return [int(t) for t in np.random.default_rng(self.seed).integers(0, 6561, self.n_tokens)]

    def embedding(self) -> np.ndarray:
        return np.random.default_rng(100 + self.seed).standard_normal(192).astype(np.float32)

    def groups(self) -> list[list[int]]:
        t = self.tokens()
        return [t[i:i + self.push] for i in range(0, len(t), self.push)]
