"""Streaming generation for one session, without a scheduler.

``stream_turn`` yields one ``StepResult`` per LM step. Closing the iterator (``.close()``, or
leaving a ``for`` loop early) cancels the turn between steps: its decode cache is freed at once
and whatever was generated so far is recorded as the assistant reply.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from .decoding import DecodeBatch, StepResult
from .loading import FunAudioChatRuntime
from .sampling import SamplingParams
from .session import ConversationState, UserTurn, start_turn

Mode = Literal["s2s", "s2t"]


def stream_turn(
    runtime: FunAudioChatRuntime,
    state: ConversationState,
    turn: UserTurn,
    params: SamplingParams | None = None,
    *,
    mode: Mode = "s2s",
) -> Iterator[StepResult]:
    """Run one turn of ``state`` and stream its steps (S2S: text + speech, S2T: text only)."""
    if mode not in ("s2s", "s2t"):
        raise ValueError(f"mode must be 's2s' or 's2t', not {mode!r}")
    prepared = start_turn(runtime, state, turn, params or SamplingParams(), speech=mode == "s2s")
    batch: DecodeBatch | None = None
    try:
        yield prepared.first
        if prepared.row.finished:
            return
        batch = DecodeBatch(runtime, speech=prepared.row.speech)
        batch.add(prepared.row, prepared.lm_cache, prepared.crq_cache)
        while batch.rows:
            (result,) = batch.step()
            yield result
    finally:
        del batch  # drops the padded decode caches right away
        state.finish_turn()
