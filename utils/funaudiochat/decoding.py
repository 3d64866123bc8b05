"""Decode steps: per-turn row state and one batched LM + CRQ step over many sessions.

A ``TurnRow`` carries everything one session's turn needs between steps (ids, penalty masks,
speech state, RNG). ``DecodeBatch`` owns padded KV caches for its rows and runs one step for
all of them at once; rows join after their prefill and leave when finished or cancelled.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .kv_cache import BatchKVCache, PrefixKVCache
from .loading import FunAudioChatRuntime
from .sampling import ChoiceRow, SamplingParams, choose, make_generator

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepResult:
    """One LM step of one session.

    ``text_token`` is the token as sampled and streamed (upstream's streamer sees the same);
    when speech ends at this step the turn's ids record ``<|audio_eos|>`` in its place.
    ``speech_tokens`` are the 5 speech ids of this step (codes < 6561 go to the vocoder; an
    end-of-speech group is 5 x 6562), or None when the step produced no speech.
    """

    text_token: int
    text_piece: str
    speech_tokens: list[int] | None
    finished: bool
    step: int = 0


class TurnRow:
    """Generation state of one session for one turn (upstream's per-row ``_sample`` state)."""

    def __init__(self, runtime: FunAudioChatRuntime, prompt_ids: list[int], params: SamplingParams, *,
                 speech: bool) -> None:
        cfg, dev = runtime.config, runtime.device
        self.runtime, self.params, self.speech = runtime, params, speech
        self.tok = runtime.tokens
        self.ids = list(prompt_ids)
        self.prompt_len = len(prompt_ids)
        self.seen_text = torch.zeros(cfg.text.vocab_size, dtype=torch.bool, device=dev)
        self.seen_text[torch.tensor(self.ids, device=dev)] = True
        self.speech_ids: list[int] = []
        self.seen_speech = torch.zeros(cfg.audio.codebook_size, dtype=torch.bool, device=dev)
        self.gen_speech = False
        self.crq_prev = cfg.audio.bos_token_id  # feedback token of the next CRQ sub-step
        self.force_abos = speech  # upstream's server forces <|audio_bos|> as the first token
        self.generator = make_generator(params.seed, dev)
        self.speech_params = params.speech or params
        self.speech_generator = (self.generator if params.speech is None
                                 else make_generator(params.speech.seed, dev))
        self.streamed: list[int] = []
        self._text = ""
        self.steps = 0
        self.finished = False

    # -- inputs of the next step ------------------------------------------------------------
    def begin_step(self) -> None:
        self.gen_speech |= self.ids[-1] == self.tok.audio_bos

    def speech_feedback_group(self) -> list[int] | None:
        """Last speech group to average into the LM input, when speaking (upstream's rule)."""
        if self.speech and self.gen_speech and self.speech_ids:
            return self.speech_ids[-5:]
        return None

    # -- token choice -------------------------------------------------------------------------
    def text_choice(self) -> ChoiceRow:
        ban = self.tok.sil if self.params.ban_sil_after_bos and self.ids[-1] == self.tok.audio_bos else None
        seen = _windowed(self.seen_text, self.ids, self.params.penalty_window)
        return ChoiceRow(self.params, self.generator, seen, self.ids, ban)

    def speech_choice(self, seen: Tensor, chosen: list[int]) -> ChoiceRow:
        context = self.speech_ids + chosen
        seen = _windowed(seen, context, self.speech_params.penalty_window)
        return ChoiceRow(self.speech_params, self.speech_generator, seen, context)

    # -- bookkeeping after a step -----------------------------------------------------------
    def apply(self, text_token: int, crq_tokens: list[int] | None) -> StepResult:
        if self.force_abos:
            text_token, self.force_abos = self.tok.audio_bos, False
        self.ids.append(text_token)
        self.seen_text[text_token] = True
        self.streamed.append(text_token)
        self.steps += 1
        self.finished = text_token == self.tok.im_end or self.steps >= self.params.max_steps
        group = None
        if self.speech and self.gen_speech:
            assert crq_tokens is not None
            group = self._take_group(crq_tokens)
        return StepResult(text_token, self._next_piece(), group, self.finished, self.steps - 1)

    def _take_group(self, crq_tokens: list[int]) -> list[int]:
        eos = self.runtime.config.audio.eos_token_id
        group = list(crq_tokens)
        if eos in group:
            group = [eos] * len(group)
            replaced = self.ids[-1]
            self.ids[-1] = self.tok.audio_eos
            if replaced not in self.ids:
                self.seen_text[replaced] = False
            self.seen_text[self.tok.audio_eos] = True
            self.gen_speech = False
        self.speech_ids += group
        self.seen_speech[torch.tensor(group, device=self.seen_speech.device)] = True
        return group

    def _next_piece(self) -> str:
        tokenizer = self.runtime.tokenizer
        if tokenizer is None:
            return ""
        text = tokenizer.decode(self.streamed, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its other bytes
            return ""
        piece, self._text = text[len(self._text) :], text
        return piece

    @property
    def generated_ids(self) -> list[int]:
        """Generated ids as recorded in the turn (after the <|audio_eos|> substitution)."""
        return self.ids[self.prompt_len :]


def _windowed(seen: Tensor, context: Sequence[int], window: int | None) -> Tensor:
    """The penalty's presence mask: `seen` (the whole context), or only the last `window` tokens."""
    if window is None:
        return seen
    mask = torch.zeros_like(seen)
    if context:
        mask[torch.tensor(context[-window:], device=seen.device)] = True
    return mask


def choose_text(rows: list[TurnRow], logits: Tensor) -> list[int]:
    """logits: fp32 [B, V] -> one token per row."""
    return choose(logits, [r.text_choice() for r in rows], kind="text").tolist()


def speech_chooser(rows: list[TurnRow]):
    """A ``TokenChooser`` for one CRQ call over ``rows``; the context grows within the group."""
    seen = torch.stack([r.seen_speech for r in rows]).clone()  # [B, C]
    chosen: list[list[int]] = [[] for _ in rows]

    def pick(logits: Tensor, sub_step: int) -> Tensor:
        choices = [r.speech_choice(seen[b], chosen[b]) for b, r in enumerate(rows)]
        tokens = choose(logits, choices, kind="speech")
        seen[torch.arange(len(rows), device=seen.device), tokens] = True
        for b, t in enumerate(tokens.tolist()):
            chosen[b].append(t)
        return tokens

    return pick


class DecodeBatch:
    """Rows decoding together; all rows either generate speech or none does."""

    def __init__(self, runtime: FunAudioChatRuntime, *, speech: bool) -> None:
        self.runtime, self.speech = runtime, speech
        cfg = runtime.config

        def cache(c) -> BatchKVCache:
            return BatchKVCache(num_layers=c.num_hidden_layers, kv_heads=c.num_key_value_heads,
                                head_dim=c.head_dim, dtype=runtime.dtype, device=runtime.device)

        self.lm_cache = cache(cfg.text)
        self.crq_cache = cache(cfg.crq) if speech else None
        self.rows: list[TurnRow] = []

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, row: TurnRow, lm_prefix: PrefixKVCache, crq_prefix: PrefixKVCache | None) -> None:
        assert row.speech == self.speech, "row and batch disagree on speech generation"
        self.lm_cache.add_row(lm_prefix)
        if self.crq_cache is not None:
            assert crq_prefix is not None
            self.crq_cache.add_row(crq_prefix)
        self.rows.append(row)

    def remove(self, row: TurnRow) -> None:
        i = self.rows.index(row)
        self.lm_cache.remove_row(i)
        if self.crq_cache is not None:
            self.crq_cache.remove_row(i)
        last = self.rows.pop()
        if i < len(self.rows):
            self.rows[i] = last  # mirrors the caches' move of the last row

    @torch.inference_mode()
    def step(self) -> list[StepResult]:
        """One decode step for every row; finished rows are removed. Results follow row order."""
        rows = list(self.rows)
        assert rows, "step on an empty batch"
        model = self.runtime.model
        for r in rows:
            r.begin_step()
        last = torch.tensor([r.ids[-1] for r in rows], device=self.runtime.device)
        token_emb = model.language_model.embed(last)  # [B, D]
        x = self._lm_inputs(rows, token_emb)  # [B, 1, D]
        logits, hidden = model.language_model(x, self.lm_cache)  # [B, V], [B, 1, D]
        crq_tokens: Sequence[list[int] | None] = [None] * len(rows)
        if self.crq_cache is not None:
            prev = torch.tensor([r.crq_prev for r in rows], device=self.runtime.device)
            toks, _ = model.audio_invert_tower.generate_group(
                hidden + token_emb[:, None], self.crq_cache, prev, speech_chooser(rows)
            )
            group_tokens: list[list[int]] = toks.tolist()  # [B, G]
            for r, t in zip(rows, group_tokens):
                r.crq_prev = t[-1]
            crq_tokens = group_tokens
        texts = choose_text(rows, logits)
        results = [r.apply(t, c) for r, t, c in zip(rows, texts, crq_tokens)]
        for r in rows:
            if r.finished:
                self.remove(r)
        return results

    def _lm_inputs(self, rows: list[TurnRow], token_emb: Tensor) -> Tensor:
        x = token_emb.clone()
        groups = [(b, g) for b, r in enumerate(rows) if (g := r.speech_feedback_group()) is not None]
        if groups:
            idx = torch.tensor([b for b, _ in groups], device=x.device)
            ids = torch.tensor([g for _, g in groups], device=x.device)  # [B', G]
            x[idx] = (token_emb[idx] + self.runtime.model.speech_group_rows(ids)) / 2
        return x[:, None]  # [B, 1, D]
