"""CosyVoice3's speech-token sampler: repetition-aware nucleus sampling (RAS) and the
ignore_eos redraw loop (spec cosyvoice3-tts.md §7.2-7.4, upstream 2db78e7 semantics).

Every draw is one ``torch.multinomial(w, 1, replacement=True)`` on a CPU fp32 tensor, the
call upstream makes. On CPU torch implements it as K Exp(1) draws from the generator and an
argmax of w / q, so a run seeded with ``torch.manual_seed(s)`` reproduces upstream token
for token (given bit-identical log-probs). The sampler therefore always works on CPU, even
when the LLM runs on a GPU: CUDA multinomial uses Philox and could never match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

SPEECH_TOKEN_SIZE = 6561  # ids >= this are sos/eos/task/fill/unused: never accepted before min_len
MAX_TRIALS = 100


class SamplingFailed(RuntimeError):
    """ignore_eos redraws kept producing stop ids (upstream's RuntimeError, same text)."""


@dataclass(frozen=True)
class RasConfig:
    """`ras_sampling` arguments; top_k=1, tau_r=2.0 is the goldens' greedy variant."""

    top_p: float = 0.8
    top_k: int = 25
    win_size: int = 10
    tau_r: float = 0.1

    def __post_init__(self) -> None:
        if self.top_k < 1 or not 0 < self.top_p <= 1 or self.win_size < 0:
            raise ValueError(f"invalid RAS settings: {self}")


GREEDY = RasConfig(top_k=1, tau_r=2.0)  # argmax (lowest index on ties); the fallback cannot fire


@dataclass(frozen=True)
class Draw:
    """One `ras_sampling` call: the token and how it was chosen."""

    token: int
    nucleus_size: int
    fallback: bool  # the nucleus pick repeated within the window; token came from the full vocab


@dataclass(frozen=True)
class SampledId:
    """One `sampling_ids` call: the accepted token, the number of draws, the last draw."""

    token: int
    trials: int  # 1 unless ignore_eos rejected stop ids
    draw: Draw


@dataclass(frozen=True)
class Distribution:
    """One position's distribution as the sampler reads it; every draw of the position (the
    ignore_eos redraws included) reuses it, and a batch computes all rows' at once."""

    probs: Tensor  # fp32 [V]: softmax over the whole vocabulary (the fallback's distribution)
    best_ids: Tensor  # int64 [n]: the n = min(top_k, V) largest entries, best first
    best_probs: Tensor  # fp32 [n]: their probabilities


def distributions(logp: Tensor, top_k: int) -> list[Distribution]:
    """Log-probs [B, V] -> each row's Distribution, best entries ordered as upstream's full
    stable descending sort orders them (equal values by ascending id).

    That sort is about 20x dearer on CPU than what is done instead: per row, every entry >=
    the top_k-th largest value (boundary ties included) in ascending id order, then one stable
    sort by value and one stable sort by row over those few entries of all rows.
    """
    assert logp.dim() == 2, f"log-probs [B, V] expected, got {tuple(logp.shape)}"
    probs = logp.detach().to("cpu", torch.float32).softmax(dim=-1)  # row by row as alone
    k = min(top_k, probs.shape[1])
    kth = probs.topk(k, dim=1, sorted=False).values.amin(dim=1, keepdim=True)  # [B, 1]
    rows, cols = (probs >= kth).nonzero(as_tuple=True)  # row-major: ascending ids per row
    values = probs[rows, cols]
    by_value = values.sort(descending=True, stable=True).indices
    order = by_value[rows[by_value].sort(stable=True).indices]  # by row, then by value
    ids, values = cols[order], values[order]
    starts = [0, *torch.bincount(rows, minlength=probs.shape[0]).cumsum(0).tolist()]
    return [Distribution(probs[b], ids[starts[b]:starts[b] + k], values[starts[b]:starts[b] + k])
            for b in range(probs.shape[0])]


def _distribution(logp: Tensor | Distribution, top_k: int) -> Distribution:
    if isinstance(logp, Distribution):
        if logp.best_ids.numel() < min(top_k, logp.probs.numel()):
            raise ValueError(f"distribution holds {logp.best_ids.numel()} best entries, top_k is {top_k}")
        return logp
    assert logp.dim() == 1, f"log-probs of one position expected, got {tuple(logp.shape)}"
    return distributions(logp[None], top_k)[0]


def nucleus(logp: Tensor | Distribution, *, top_p: float, top_k: int) -> tuple[Tensor, Tensor]:
    """The nucleus as upstream builds it: (ids int64 [K], probs fp32 [K]), best first.

    Entries are taken while the running fp32 sum is below fp32(top_p) and fewer than top_k
    are taken, so the entry that crosses top_p is included. The sum is accumulated one fp32
    add at a time like upstream's loop: numpy's float32 cumsum adds in order in float32
    (torch.cumsum would accumulate in double). The sums never decrease, so entry j is taken
    exactly when the sum before it is below the limit.
    """
    dist = _distribution(logp, top_k)
    running = np.cumsum(dist.best_probs[:top_k].numpy(), dtype=np.float32)
    k = 1 + int(np.count_nonzero(running[:-1] < np.float32(top_p)))  # top_p > 0: the best is in
    return dist.best_ids[:k], dist.best_probs[:k]


def nucleus_sampling(logp: Tensor | Distribution, *, top_p: float, top_k: int,
                     generator: torch.Generator | None = None) -> tuple[int, int]:
    """(token, nucleus size): one multinomial draw over the unnormalised nucleus probs."""
    ids, probs = nucleus(logp, top_p=top_p, top_k=top_k)
    j = int(torch.multinomial(probs, 1, replacement=True, generator=generator))
    return int(ids[j]), int(ids.numel())


def random_sampling(dist: Distribution, *, generator: torch.Generator | None = None) -> int:
    """One draw from softmax(logp) over the whole vocabulary (stop ids included)."""
    return int(torch.multinomial(dist.probs, 1, replacement=True, generator=generator))


def ras_sampling(logp: Tensor | Distribution, history: Sequence[int], cfg: RasConfig = RasConfig(), *,
                 generator: torch.Generator | None = None) -> Draw:
    """Nucleus draw; if it occurs >= win_size * tau_r times in the last win_size emitted
    tokens, redraw from the full distribution (the repeated token stays possible: 2db78e7)."""
    dist = _distribution(logp, cfg.top_k)
    token, size = nucleus_sampling(dist, top_p=cfg.top_p, top_k=cfg.top_k, generator=generator)
    window = history[-cfg.win_size:] if cfg.win_size else ()
    if sum(1 for t in window if t == token) >= cfg.win_size * cfg.tau_r:
        return Draw(random_sampling(dist, generator=generator), size, True)
    return Draw(token, size, False)


def sampling_ids(logp: Tensor | Distribution, history: Sequence[int], cfg: RasConfig = RasConfig(), *,
                 ignore_eos: bool, speech_token_size: int = SPEECH_TOKEN_SIZE,
                 max_trials: int = MAX_TRIALS, generator: torch.Generator | None = None) -> SampledId:
    """Draw until a speech token comes out when ``ignore_eos`` (i.e. before min_len).

    Raises SamplingFailed at the (max_trials + 1)-th rejected draw, as upstream 2db78e7 does:
    with a peaked distribution whose best entry is a stop id this is the expected outcome.
    """
    dist, rejected = _distribution(logp, cfg.top_k), 0
    while True:
        draw = ras_sampling(dist, history, cfg, generator=generator)
        if not ignore_eos or draw.token < speech_token_size:
            return SampledId(draw.token, rejected + 1, draw)
        rejected += 1
        if rejected > max_trials:
            raise SamplingFailed(f"sampling reaches max_trials {max_trials} and still get eos when "
                                 "ignore_eos is True, check your input!")
