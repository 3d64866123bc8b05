"""Top-p over a flat vocabulary: the bucketed pick equals its full-sort definition, row by row."""

from __future__ import annotations

import pytest
import torch

from utils.funaudiochat import sampling
from utils.funaudiochat.sampling import _wide_pick, _wide_pick_sorted


def _flat_probs(rows: int, vocab: int, scale: float, *, ties: bool, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=gen) * scale
    if ties:  # coarse logits give many exactly equal probabilities
        logits = (logits * 32).round() / 32
    return (logits / 0.8).softmax(dim=-1)  # [rows, V]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("scale", [0.05, 1.0, 3.0])
def test_bucketed_pick_equals_sorted_definition(monkeypatch, ties: bool, scale: float) -> None:
    monkeypatch.setattr(sampling, "_SORT_BELOW", 0)  # take the bucket path at any vocabulary size
    for vocab in (151936, 6565):
        probs = _flat_probs(6, vocab, scale, ties=ties, seed=vocab)
        u = torch.rand(6, generator=torch.Generator().manual_seed(1)).tolist()
        u[0] = 0.0
        for top_p in (0.2, 0.9, 0.999, 1.0):
            assert _wide_pick(probs, [top_p] * 6, u) == _wide_pick_sorted(probs, [top_p] * 6, u)


def test_bucketed_pick_is_row_independent() -> None:
    probs = _flat_probs(8, 151936, 0.1, ties=True, seed=3)
    top_p = [0.9, 0.5, 0.99, 0.9, 1.0, 0.8, 0.9, 0.95]
    u = torch.rand(8, generator=torch.Generator().manual_seed(2)).tolist()
    alone = [_wide_pick(probs[j : j + 1].clone(), [top_p[j]], [u[j]])[0] for j in range(8)]
    assert _wide_pick(probs, top_p, u) == alone
