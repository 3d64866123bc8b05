"""Speech-token decoding for one request (spec §6 lengths, §7.1 loop; upstream 2db78e7).

`TokenDecoder` owns one request's KV cache, emitted tokens and random generator and runs one
LLM step per `step()`; `generate_speech_tokens` wraps it as a token stream. Per step:
the LLM gives log-probs of the next position, `sampling_ids` draws (redrawing stop ids while
fewer than min_len tokens exist), a stop id ends the request without being emitted, and
otherwise the token is emitted and fed back through `speech_embedding`.

Failure mode kept from upstream: if the redraws before min_len keep producing stop ids,
`SamplingFailed` is raised after the tokens emitted so far; upstream's non-stream `tts()`
then vocodes those tokens, so callers may do the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from transformers.cache_utils import DynamicCache

from .llm import CosyVoice3LM
from .llm_config import LLMConfig
from .ras_sampling import Distribution, RasConfig, SampledId, sampling_ids

EndReason = Literal["stop", "max_len"]


@dataclass(frozen=True)
class LengthLimits:
    """Emitted-token bounds from the number of tts text ids (prompt/instruct text excluded)."""

    min_len: int  # stop ids are redrawn while fewer tokens were emitted
    max_len: int  # decoding steps at most

    @classmethod
    def for_text(cls, n_tts_ids: int, cfg: LLMConfig) -> LengthLimits:
        # upstream: int((text_len - prompt_text_len) * ratio), truncation included
        return cls(int(n_tts_ids * cfg.min_token_text_ratio), int(n_tts_ids * cfg.max_token_text_ratio))


@dataclass(frozen=True)
class DecodeStep:
    """What one LLM step produced; `token` is None when it sampled a stop id."""

    index: int
    token: int | None
    sampled: SampledId  # the accepted draw (a stop id when token is None)
    logp: Tensor  # fp32 [V] on CPU: what the sampler saw
    hidden: Tensor  # [D] final-normed hidden state of the position, model device/dtype


class TokenDecoder:
    """Per-request decoding state (KV cache, emitted tokens, generator); the model is shared.

    `generator=None` draws from torch's global CPU generator like upstream, so a preceding
    `torch.manual_seed(s)` reproduces an upstream run; a served request should pass its own
    `torch.Generator` so that concurrent requests do not consume each other's numbers.
    """

    def __init__(self, lm: CosyVoice3LM, lm_input: Tensor, limits: LengthLimits, *,
                 sampler: RasConfig | None = None, generator: torch.Generator | None = None) -> None:
        assert lm_input.dim() == 3 and lm_input.shape[0] == 1, tuple(lm_input.shape)  # [1, L, D]
        if limits.max_len < 0 or limits.min_len < 0:
            raise ValueError(f"invalid length limits {limits}")
        self.lm = lm
        self.limits = limits
        self.sampler = sampler or lm.cfg.sampler
        self.generator = generator
        self.tokens: list[int] = []
        self.end: EndReason | None = None if limits.max_len > 0 else "max_len"  # upstream: no step
        self._prefill: Tensor | None = lm_input  # the first step's input; later ones embed the last token
        self._cache: DynamicCache | None = None
        self._stop = lm.cfg.stop_token_ids

    @property
    def finished(self) -> bool:
        return self.end is not None

    @torch.inference_mode()
    def step(self) -> DecodeStep:
        """Run one LLM step; raises SamplingFailed as described in the module docstring."""
        if self.end is not None:
            raise RuntimeError(f"decoding already ended ({self.end})")
        x = self._prefill if self._prefill is not None else self.lm.embed_speech(self.tokens[-1:])
        self._prefill = None
        logp, hidden, self._cache = self.lm.step(x, self._cache)
        return self.accept(logp[0], hidden[0])

    def accept(self, logp: Tensor, hidden: Tensor, dist: Distribution | None = None) -> DecodeStep:
        """The sampling half of `step`, for log-probs [V] / hidden [D] of the next position
        computed elsewhere (a batched step over many requests, tts_scheduler.py), which may
        also pass the position's sampler Distribution, computed for all rows at once."""
        if self.end is not None:
            raise RuntimeError(f"decoding already ended ({self.end})")
        i = len(self.tokens)
        logp_cpu = logp.to("cpu", torch.float32)
        sampled = sampling_ids(logp_cpu if dist is None else dist, self.tokens, self.sampler,
                               ignore_eos=i < self.limits.min_len,
                               speech_token_size=self.lm.cfg.speech_token_size, generator=self.generator)
        if sampled.token in self._stop:
            self._finish("stop")
            return DecodeStep(i, None, sampled, logp_cpu, hidden)
        self.tokens.append(sampled.token)
        if len(self.tokens) >= self.limits.max_len:
            self._finish("max_len")
        return DecodeStep(i, sampled.token, sampled, logp_cpu, hidden)

    def take_cache(self) -> DynamicCache | None:
        """Hand the KV cache over (to a batch); this decoder then only samples, via `accept`."""
        cache, self._cache = self._cache, None
        return cache

    def _finish(self, reason: EndReason) -> None:
        self.end = reason
        self._cache = None  # the KV cache is the only large state; free it at once


def generate_speech_tokens(lm: CosyVoice3LM, lm_input: Tensor, limits: LengthLimits, *,
                           sampler: RasConfig | None = None,
                           generator: torch.Generator | None = None) -> Iterator[int]:
    """Yield speech tokens one by one as they are sampled (nothing is buffered or revised)."""
    decoder = TokenDecoder(lm, lm_input, limits, sampler=sampler, generator=generator)
    while not decoder.finished:
        step = decoder.step()
        if step.token is not None:
            yield step.token
