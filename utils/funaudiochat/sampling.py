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
    penalty = torch.tensor([r.params.repetition_penalty for r in rows], device=scores.device)
    if bool((penalty == 1.0).all()):
        return scores
    # only the seen tokens change: a few hundred per row out of the whole vocabulary
    b, v = torch.stack([r.seen for r in rows]).nonzero(as_tuple=True)  # [B, V] mask -> index pairs
    old, pen = scores[b, v], penalty[b]
    scores = scores.clone()
    scores[b, v] = torch.where(old < 0, old * pen, old / pen)
    return scores


CANDIDATES = 1024  # sampling looks at this many best tokens unless top-p needs more


def _sample(scores: Tensor, rows: list[ChoiceRow], sampling: list[bool]) -> dict[int, int]:
    """Temperature, top-k, top-p and a draw for the sampling rows: {row index: token}.

    Top-k then top-p as HF applies them (top-p sees probabilities renormalised over the top-k
    survivors). Both only ever keep the best tokens, so they run on the ``CANDIDATES`` best; a
    row whose top-p set could reach beyond them (a flat distribution) goes to ``_wide_pick``.
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
    u = torch.stack([torch.rand((), generator=r.generator, device=dev) for r in sub])  # [b], one draw per row
    picks = _draw(cand_p, u)
    out = {b: int(cand_idx[j, picks[j]]) for j, b in enumerate(idx_rows)}
    wide = (~covered).nonzero()[:, 0].tolist()
    if wide:
        for j, token in zip(wide, _wide_pick(probs[wide], [sub[j].params.top_p for j in wide], u[wide].tolist())):
            out[idx_rows[j]] = token
    return out


def _draw(weights: Tensor, u: Tensor) -> list[int]:
    """One inverse-CDF draw per row from unnormalised weights [b, N] and uniforms u [b]."""
    cdf = weights.cumsum(dim=-1)  # [b, N]
    picks = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    return picks.clamp(max=weights.shape[-1] - 1).tolist()


# Top-p over a whole (flat) vocabulary, without sorting it.
#
# The order is probability descending, then token id ascending; a token is kept while the mass
# of the tokens before it is below top_p, and u * (kept mass) is found in the running mass.
# Masses are float64 sums of float32 probabilities, which are exact (so independent of how they
# are grouped) while every summand is >= 2**-29: each float32 is a multiple of 2**-52 then, and
# the sums stay below 2. Tokens under 2**-29 hold < 3e-4 of the mass, so a nucleus with
# top_p <= 0.999 never needs them; the rare rows that do take ``_wide_pick_sorted``.
# Probabilities are grouped into buckets by their top 16 float bits (sign, exponent, 7 mantissa
# bits, so bucket order is value order and one bucket shares an exponent, which keeps its sum
# exact at any size); only the one or two buckets where a running mass crosses are sorted.
_BUCKET_SHIFT = 16
_NUM_BUCKETS = 1 << (31 - _BUCKET_SHIFT)
_EXACT_BUCKET = (127 - 29) << (23 - _BUCKET_SHIFT)  # first bucket of values >= 2**-29
_EXACT_TOP_P = 0.999
_SORT_BELOW = 32768  # vocabularies this small (speech codes) are simply sorted, all rows at once


def _wide_pick(probs: Tensor, top_p: list[float], u: list[float]) -> list[int]:
    """probs: fp32 [b, V] -> one token per row: top-p nucleus and an inverse-CDF draw."""
    b, vocab = probs.shape
    if vocab < _SORT_BELOW:
        return _wide_pick_sorted(probs, top_p, u)
    dev = probs.device
    bucket = probs.view(torch.int32) >> _BUCKET_SHIFT  # [b, V], value order
    slots = bucket + torch.arange(b, device=dev, dtype=torch.int32)[:, None] * _NUM_BUCKETS
    mass = torch.bincount(slots.view(-1), weights=probs.reshape(-1).double(), minlength=b * _NUM_BUCKETS)
    from_top = mass.view(b, _NUM_BUCKETS).flip(-1).cumsum(-1)  # [b, NB]: mass of buckets >= each, best first
    tokens: dict[int, int] = {}
    for j in range(b):
        cum = from_top[j]
        nucleus_end = int(torch.searchsorted(cum, top_p[j]))  # first bucket (from the top) reaching top_p
        if top_p[j] > _EXACT_TOP_P or nucleus_end >= _NUM_BUCKETS or _NUM_BUCKETS - 1 - nucleus_end < _EXACT_BUCKET:
            continue
        ids, running = _bucket_run(probs[j], bucket[j], cum, nucleus_end)
        kept = int(torch.searchsorted(running, top_p[j]))  # first token whose running mass reaches top_p
        target = u[j] * float(running[kept])
        draw_bucket = int(torch.searchsorted(cum, target, right=True))
        if draw_bucket != nucleus_end:
            ids, running = _bucket_run(probs[j], bucket[j], cum, draw_bucket)
        tokens[j] = int(ids[torch.searchsorted(running, target, right=True)])
    rest = [j for j in range(b) if j not in tokens]
    if rest:
        tokens.update(zip(rest, _wide_pick_sorted(probs[rest], [top_p[j] for j in rest], [u[j] for j in rest])))
    return [tokens[j] for j in range(b)]


def _bucket_run(p: Tensor, bucket: Tensor, cum: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Tokens of the k-th bucket from the top in nucleus order, and the running mass at each."""
    ids = (bucket == _NUM_BUCKETS - 1 - k).nonzero()[:, 0]  # ascending ids
    vals, order = p[ids].sort(descending=True, stable=True)  # ties keep ascending ids
    above = float(cum[k - 1]) if k > 0 else 0.0
    return ids[order], above + vals.double().cumsum(0)


def _wide_pick_sorted(probs: Tensor, top_p: list[float], u: list[float]) -> list[int]:
    """``_wide_pick`` by a full sort of every row: its definition, and the way for small vocabularies."""
    dev, vocab = probs.device, probs.shape[-1]
    vals, order = probs.sort(dim=-1, descending=True, stable=True)
    running = vals.double().cumsum(-1)  # [b, V]
    tp = torch.tensor(top_p, device=dev, dtype=torch.float64)[:, None]
    kept = torch.searchsorted(running, tp).clamp(max=vocab - 1)  # [b, 1]
    kept = torch.where(tp >= 1.0, vocab - 1, kept)
    target = torch.tensor(u, device=dev, dtype=torch.float64)[:, None] * running.gather(1, kept)
    picks = torch.minimum(torch.searchsorted(running, target, right=True), kept)  # [b, 1]
    return order.gather(1, picks)[:, 0].tolist()


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
    sampling = [r.params.do_sample and not g for r, g in zip(rows, greedy_raw)]
    tokens = torch.zeros(len(rows), dtype=torch.long, device=logits.device)
    argmax_rows = [b for b, s in enumerate(sampling) if not s]  # sampled rows need no argmax
    if argmax_rows:
        raw = torch.tensor([greedy_raw[b] for b in argmax_rows], device=logits.device)
        tokens[argmax_rows] = torch.where(raw, logits[argmax_rows].argmax(-1), scores[argmax_rows].argmax(-1))
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
