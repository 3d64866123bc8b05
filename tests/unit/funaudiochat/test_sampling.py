"""Top-p over a flat vocabulary: the bucketed pick equals its full-sort definition, row by row."""

from __future__ import annotations

import pytest
import torch

from utils.funaudiochat import sampling
from utils.funaudiochat.sampling import ChoiceRow, SamplingParams, _wide_pick, _wide_pick_sorted


def _flat_probs(rows: int, vocab: int, scale: float, *, ties: bool, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=gen) * scale
    if ties:  # coarse logits give many exactly equal probabilities
        logits = (logits * 32).round() / 32
    return (logits / 0.8).softmax(dim=-1)  # [rows, V]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("scale", [0.05, 1.0, 3.0])
def test_bucketed_pick_equals_sorted_definition(ties: bool, scale: float) -> None:
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


def test_bucketed_pick_with_draws_across_many_buckets() -> None:
    # steep rows: the nucleus spans many buckets and the draw range first..last can be wide
    probs = _flat_probs(16, 6565, 6.0, ties=False, seed=5)
    u = [j / 16 for j in range(16)]
    for top_p in (0.5, 0.95):
        assert _wide_pick(probs, [top_p] * 16, u) == _wide_pick_sorted(probs, [top_p] * 16, u)


def _rows(params: list[SamplingParams]) -> list[ChoiceRow]:
    return [ChoiceRow(p, torch.Generator(), torch.zeros(1, dtype=torch.bool), []) for p in params]


@pytest.mark.parametrize("scale", [0.05, 1.0, 3.0, 8.0])
def test_surely_wide_rows_are_never_covered(scale: float) -> None:
    # the shortcut may only skip the top-k pass for rows that pass would have found uncovered
    probs = _flat_probs(8, 6565, scale, ties=False, seed=7)
    sub = _rows([SamplingParams(top_p=p, top_k=k) for p, k in
                 [(0.9, 0), (0.1, 0), (0.5, 0), (1.0, 0), (0.9, 50), (0.05, 0), (0.99, 0), (0.3, 0)]])
    k_cap = sampling.CANDIDATES
    wide = sampling._surely_wide(probs, sub, k_cap)
    _, covered = sampling._candidate_pick(probs, sub, torch.zeros(8), k_cap)
    assert not any(w and c for w, c in zip(wide, covered))
    assert wide[3] and not wide[4]  # top_p = 1 always goes wide; a top-k row never does


def test_sample_is_row_independent_with_mixed_rows() -> None:
    probs_logits = torch.cat([_flat_probs(3, 6565, 0.05, ties=True, seed=8).log(),
                              _flat_probs(3, 6565, 8.0, ties=False, seed=9).log()])  # [6, V]: flat and peaked
    params = [SamplingParams(seed=s, top_p=p, top_k=k) for s, p, k in
              [(1, 0.9, 0), (2, 1.0, 0), (3, 0.9, 20), (4, 0.9, 0), (5, 0.2, 0), (6, 1.0, 5)]]

    def pick(rows: list[int]) -> list[int]:
        sub = [ChoiceRow(params[j], torch.Generator().manual_seed(j), torch.zeros(1, dtype=torch.bool), [])
               for j in rows]
        out = sampling._sample(probs_logits[rows], sub, [True] * len(rows))
        return [out[i] for i in range(len(rows))]

    assert pick(list(range(6))) == [pick([j])[0] for j in range(6)]
