"""Token choice for text and speech, batched over sessions with per-row settings.

Order of operations is HF's: repetition penalty, bad words (text only), extra processors, then,
when sampling, temperature, top-k and top-p. The penalty context is kept as a presence mask per
row (penalising a token once or many times gives the same scores).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

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
    # The penalty sees only the last N tokens of its context (moshi's repetition_penalty_context);
    # None: the whole context, as upstream Fun-Audio-Chat penalises.
    penalty_window: int | None = None
    # Settings of the speech tokens, with their own RNG, when they differ from the text's
    # (upstream's browser client sets text_* and audio_* apart); None: these settings and RNG.
    # Its own max_steps, text_greedy, ban_sil_after_bos and speech field are not read.
    speech: SamplingParams | None = None

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0 (use do_sample=False or top_k=1 for greedy)")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0 or self.repetition_penalty <= 0 or self.max_steps < 1:
            raise ValueError("top_k >= 0, repetition_penalty > 0 and max_steps >= 1 are required")
        if self.penalty_window is not None and self.penalty_window < 1:
            raise ValueError("penalty_window must be >= 1 (None: the whole context)")


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
    u = torch.stack([torch.rand((), generator=r.generator, device=dev) for r in sub])  # [b], one draw per row
    k_cap = min(scores.shape[-1], max([CANDIDATES] + [r.params.top_k for r in sub]))
    wide = _surely_wide(probs, sub, k_cap)
    narrow = [j for j, w in enumerate(wide) if not w]
    out: dict[int, int] = {}
    if narrow:
        some = probs if len(narrow) == len(sub) else probs[narrow]  # no copy in the usual all-narrow case
        picks, covered = _candidate_pick(some, [sub[j] for j in narrow], u[narrow], k_cap)
        for j, token, c in zip(narrow, picks, covered):
            out[idx_rows[j]] = token
            wide[j] = not c
    rest = [j for j, w in enumerate(wide) if w]
    if rest:
        some = probs if len(rest) == len(sub) else probs[rest]
        for j, token in zip(rest, _wide_pick(some, [sub[j].params.top_p for j in rest], u[rest].tolist())):
            out[idx_rows[j]] = token
    return out


def _surely_wide(probs: Tensor, sub: list[ChoiceRow], k_cap: int) -> list[bool]:
    """Rows that ``_candidate_pick`` would find uncovered, known without its top-k pass.

    A top-k-free row is uncovered when top_p is 1 or its k_cap best tokens sum below top_p; that
    sum is surely short when k_cap copies of its best probability are (the float32 sum of n <
    160,000 values of at most m stays below 1.01 * n * m).
    """
    dev = probs.device
    top_p = torch.tensor([r.params.top_p for r in sub], device=dev, dtype=torch.float64)
    free = torch.tensor([r.params.top_k == 0 for r in sub], device=dev)
    short = probs.amax(dim=-1).double() * (1.01 * k_cap) < top_p
    return (free & ((top_p >= 1.0) | short)).tolist()


def _candidate_pick(probs: Tensor, sub: list[ChoiceRow], u: Tensor,
                    k_cap: int) -> tuple[list[int], list[bool]]:
    """Top-k, top-p and the draw over each row's k_cap best tokens; covered: whether that was enough."""
    dev = probs.device
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
    picks = _draw(cand_p, u)
    return [int(cand_idx[j, picks[j]]) for j in range(len(sub))], covered.tolist()


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
# exact at any size); only the buckets where the nucleus ends and where the draw can land are
# gathered and sorted, for all rows at once.
_BUCKET_SHIFT = 16
_NUM_BUCKETS = 1 << (31 - _BUCKET_SHIFT)
_EXACT_BUCKET = (127 - 29) << (23 - _BUCKET_SHIFT)  # first bucket of values >= 2**-29
_EXACT_TOP_P = 0.999
_CHUNK = 16384  # columns per histogram slice: [b, V] float64 copies cost more in page faults than in work


def _wide_pick(probs: Tensor, top_p: list[float], u: list[float]) -> list[int]:
    """probs: fp32 [b, V] -> one token per row: top-p nucleus and an inverse-CDF draw."""
    b, dev = probs.shape[0], probs.device
    from_top = _bucket_mass(probs).flip(-1).cumsum(-1)  # [b, NB]: mass of buckets >= each, best first
    tp = torch.tensor(top_p, device=dev, dtype=torch.float64)[:, None]
    nucleus_end = torch.searchsorted(from_top, tp)  # [b, 1]: first bucket (from the top) reaching top_p
    exact = (tp <= _EXACT_TOP_P) & (_NUM_BUCKETS - 1 - nucleus_end >= _EXACT_BUCKET)  # implies < NB
    ut = torch.tensor(u, device=dev, dtype=torch.float64)[:, None]
    rows = exact[:, 0].nonzero()[:, 0].tolist()
    tokens = [-1] * b
    if len(rows) == b:  # the usual case: no copy of the batch
        tokens = _bucket_draw(probs, from_top, nucleus_end, tp, ut)
    elif rows:
        drawn = _bucket_draw(probs[rows], from_top[rows], nucleus_end[rows], tp[rows], ut[rows])
        for j, token in zip(rows, drawn):
            tokens[j] = token
    rest = [j for j in range(b) if tokens[j] < 0]
    if rest:
        picked = _wide_pick_sorted(probs[rest], [top_p[j] for j in rest], [u[j] for j in rest])
        for j, token in zip(rest, picked):
            tokens[j] = token
    return tokens


def _bucket_mass(probs: Tensor) -> Tensor:
    """probs: fp32 [b, V] -> float64 mass per bucket [b, NB], in value order."""
    mass = torch.zeros(probs.shape[0], _NUM_BUCKETS, dtype=torch.float64, device=probs.device)
    for start in range(0, probs.shape[1], _CHUNK):
        part = probs[:, start : start + _CHUNK]
        mass.scatter_add_(1, (part.view(torch.int32) >> _BUCKET_SHIFT).long(), part.double())
    return mass


def _bucket_draw(probs: Tensor, from_top: Tensor, nucleus_end: Tensor, tp: Tensor, u: Tensor) -> list[int]:
    """The draw of rows whose nucleus ends in bucket ``nucleus_end`` [b, 1] (counted from the top).

    The kept mass lies between top_p and the mass down to that bucket, so the buckets the draw can
    land in are known before the nucleus is: one gathering of tokens serves both searches.
    """
    first = torch.searchsorted(from_top, u * tp, right=True)  # [b, 1]
    last = torch.searchsorted(from_top, u * from_top.gather(1, nucleus_end), right=True)
    ids, running = _bucket_runs(probs, from_top, first, last, nucleus_end)
    kept = torch.searchsorted(running, tp)  # [b, 1]: first token whose running mass reaches top_p
    target = u * running.gather(1, kept)
    return ids.gather(1, torch.searchsorted(running, target, right=True))[:, 0].tolist()


def _bucket_runs(
    probs: Tensor, from_top: Tensor, first: Tensor, last: Tensor, nucleus_end: Tensor
) -> tuple[Tensor, Tensor]:
    """Tokens of buckets first..last and nucleus_end (from the top) [b, W] in nucleus order, and
    the running mass of the whole order at each (+inf on padding, so every row stays sorted)."""
    b, dev = probs.shape[0], probs.device
    member = _in_buckets(probs, last, first) | _in_buckets(probs, nucleus_end, nucleus_end)  # [b, V]
    row, ids = member.nonzero(as_tuple=True)  # row-major, so ascending ids within a row
    count = torch.bincount(row, minlength=b)  # [b]
    pos = torch.arange(len(row), device=dev) - (count.cumsum(0) - count)[row]  # place within its row
    vals = torch.full((b, int(count.max())), -1.0, device=dev)  # [b, W]; padding sorts last
    vals[row, pos] = probs[row, ids]
    tok = torch.zeros(vals.shape, dtype=torch.long, device=dev)
    tok[row, pos] = ids
    vals, order = vals.sort(dim=-1, descending=True, stable=True)  # ties keep ascending ids
    # whole buckets are gathered, so the mass missing before a token is that of the buckets skipped
    in_range = _in_buckets(vals, last, first)
    skipped = (_mass_above(from_top, nucleus_end) - _mass_above(from_top, last + 1)
               + _mass_above(from_top, first))
    gap = torch.where(in_range, _mass_above(from_top, first), skipped)
    running = torch.where(vals >= 0, vals.double().cumsum(-1) + gap, float("inf"))
    return tok.gather(1, order), running


def _in_buckets(probs: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """Whether each probability lies in buckets high..low counted from the top (low >= high) [b, 1].

    Bucket bounds as floats compare like bucket numbers, without a [b, V] integer copy. Bucket 0
    from the top (NaN bits) would overflow ``ceil``; probabilities never reach it.
    """
    floor = ((_NUM_BUCKETS - 1 - low) << _BUCKET_SHIFT).to(torch.int32).view(torch.float32)
    ceil = ((_NUM_BUCKETS - high) << _BUCKET_SHIFT).to(torch.int32).view(torch.float32)
    return (probs >= floor) & (probs < ceil)


def _mass_above(from_top: Tensor, k: Tensor) -> Tensor:
    """Mass of the buckets before the k-th from the top [b, 1]."""
    return torch.where(k > 0, from_top.gather(1, (k - 1).clamp(min=0)), 0.0)


def _wide_pick_sorted(probs: Tensor, top_p: list[float], u: list[float]) -> list[int]:
    """``_wide_pick`` by a full sort of every row: its definition, and the way for rows buckets
    cannot serve."""
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
            process = hook.text if kind == "text" else hook.speech
            scores[b] = process(r.context, scores[b])
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
