"""Token choice for text and speech, batched over sessions with per-row settings.

Order of operations is HF's: repetition penalty, bad words (text only), extra processors, then,
when sampling, temperature, top-k and top-p. The penalty context is kept as a presence mask per
row (penalising a token once or many times gives the same scores).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch
from torch import Tensor


class ExtraLogitsProcessor(Protocol):
    """User hook run after the penalty and bad words and before the warpers, per row.

    ``context`` is what HF would pass as ``input_ids``: prompt + generated text ids for text;
    speech ids of this turn + tokens already chosen in the current group for speech.
    """

    def text(self, context: Sequence[int], scores: Tensor) -> Tensor: ...

    def speech(self, context: Sequence[int], scores: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class SamplingParams:
    """Per-turn generation settings; defaults are upstream's web-server S2S settings."""

    temperature: float = 0.8
    top_p: float = 0.9
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.2
    max_steps: int = 512
    do_sample: bool = True
    text_greedy: bool = False  # argmax of raw text logits, no processors (upstream S2T)
    ban_sil_after_bos: bool = True  # bad_words_ids [[<|audio_bos|>, <|sil|>]]
    seed: int | None = None
    extra_processor: ExtraLogitsProcessor | None = None

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0 (use do_sample=False or top_k=1 for greedy)")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0 or self.repetition_penalty <= 0 or self.max_steps < 1:
            raise ValueError("top_k >= 0, repetition_penalty > 0 and max_steps >= 1 are required")


@dataclass
class ChoiceRow:
    """What one row contributes to a batched choice."""

    params: SamplingParams
    generator: torch.Generator
    seen: Tensor  # bool [V]: tokens in the penalty context
    context: Sequence[int]  # only read by extra processors
    ban_token: int | None = None  # a token banned at this step (bad words)


def _apply_penalty(scores: Tensor, rows: list[ChoiceRow]) -> Tensor:
    penalty = torch.tensor([r.params.repetition_penalty for r in rows], device=scores.device)[:, None]
    if bool((penalty == 1.0).all()):
        return scores
    seen = torch.stack([r.seen for r in rows])  # [B, V]
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalised, scores)


CANDIDATES = 1024  # sampling looks at this many best tokens unless top-p needs more


def _sample(scores: Tensor, rows: list[ChoiceRow], sampling: list[bool]) -> dict[int, int]:
    """Temperature, top-k, top-p and a draw for the sampling rows: {row index: token}.

    Top-k then top-p as HF applies them (top-p sees probabilities renormalised over the top-k
    survivors). Both only ever keep the best tokens, so they run on the ``CANDIDATES`` best; a
    row whose top-p set could reach beyond them falls back to the whole vocabulary.
    """
    idx_rows = [b for b, s in enumerate(sampling) if s]
    sub = [rows[b] for b in idx_rows]
    dev = scores.device
    temps = torch.tensor([r.params.temperature for r in sub], device=dev)[:, None]
    probs = (scores[idx_rows] / temps).softmax(dim=-1)  # [b, V]
    k_cap = min(scores.shape[-1], max([CANDIDATES] + [r.params.top_k for r in sub]))
    cand_p, cand_idx = probs.topk(k_cap, dim=-1)  # [b, K], best first
    rank = torch.arange(k_cap, device=dev)[None]
    top_k = torch.tensor([r.params.top_k or k_cap for r in sub], device=dev)[:, None]
    cand_p = torch.where(rank < top_k, cand_p, torch.zeros_like(cand_p))
    limited = torch.tensor([r.params.top_k > 0 for r in sub], device=dev)[:, None]
    cand_p = torch.where(limited, cand_p / cand_p.sum(-1, keepdim=True), cand_p)
    top_p = torch.tensor([r.params.top_p for r in sub], device=dev, dtype=cand_p.dtype)[:, None]
    before = cand_p.cumsum(-1) - cand_p  # mass of strictly better candidates
    cand_p = torch.where((before < top_p) | (top_p >= 1.0) | (rank == 0), cand_p, torch.zeros_like(cand_p))
    # a top-k-free row needs its top-p set inside the candidates: their mass must reach top_p
    covered = limited[:, 0] | ((probs.gather(1, cand_idx).sum(-1) >= top_p[:, 0]) & (top_p[:, 0] < 1.0))
    weights, index = cand_p, cand_idx
    if not bool(covered.all()):
        # very flat rows (or top_p = 1): top-p over the whole vocabulary, sorted once for all
        wide = (~covered).nonzero()[:, 0]
        sorted_p, order = probs[wide].sort(dim=-1, descending=True)
        keep = ((sorted_p.cumsum(-1) - sorted_p) < top_p[wide]) | (top_p[wide] >= 1.0)
        weights = torch.zeros(len(sub), probs.shape[-1], device=dev, dtype=probs.dtype)
        index = torch.zeros(len(sub), probs.shape[-1], device=dev, dtype=torch.long)
        weights[:, :k_cap], index[:, :k_cap] = cand_p, cand_idx
        weights[wide], index[wide] = torch.where(keep, sorted_p, torch.zeros_like(sorted_p)), order
    picks = _draw(weights, [r.generator for r in sub])
    return {b: int(index[j, picks[j]]) for j, b in enumerate(idx_rows)}


def _draw(weights: Tensor, generators: list[torch.Generator]) -> list[int]:
    """One inverse-CDF draw per row from unnormalised weights [b, N], each with its own RNG."""
    cdf = weights.cumsum(dim=-1)  # [b, N]
    u = torch.stack([torch.rand((), generator=g, device=weights.device) for g in generators])
    picks = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    return picks.clamp(max=weights.shape[-1] - 1).tolist()


def choose(logits: Tensor, rows: list[ChoiceRow], *, kind: str) -> Tensor:
    """logits: fp32 [B, V] raw -> chosen tokens [B] (kind is "text" or "speech")."""
    assert logits.dim() == 2 and logits.shape[0] == len(rows), (logits.shape, len(rows))
    greedy_raw = [kind == "text" and r.params.text_greedy for r in rows]
    scores = _apply_penalty(logits, rows)
    for b, r in enumerate(rows):
        if r.ban_token is not None:
            scores[b, r.ban_token] = float("-inf")
        hook = r.params.extra_processor
        if hook is not None and not greedy_raw[b]:
            scores[b] = hook.text(r.context, scores[b]) if kind == "text" else hook.speech(r.context, scores[b])
    tokens = torch.where(torch.tensor(greedy_raw, device=logits.device), logits.argmax(-1), scores.argmax(-1))
    sampling = [r.params.do_sample and not g for r, g in zip(rows, greedy_raw)]
    if any(sampling):
        for b, t in _sample(scores, rows, sampling).items():
            tokens[b] = t
    return tokens


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen
