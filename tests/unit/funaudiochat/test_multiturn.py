"""KV reuse across turns: the cached path matches recomputing the whole prompt."""

from __future__ import annotations

import pytest
import torch

from tests.fac_golden import wav
from utils.funaudiochat import ConversationState, SamplingParams, UserTurn, stream_turn

GREEDY = SamplingParams(top_k=1, max_steps=4)


class LmCalls:
    """Records (input length, logits) of every LM forward."""

    def __init__(self, model) -> None:
        self.calls: list[tuple[int, torch.Tensor]] = []
        self._handle = model.language_model.register_forward_hook(
            lambda _m, inp, out: self.calls.append((inp[0].shape[1], out[0].clone()))
        )

    def close(self) -> None:
        self._handle.remove()


def _run(runtime, state, audio, params=GREEDY, mode="s2s"):
    rec = LmCalls(runtime.model)
    try:
        steps = list(stream_turn(runtime, state, UserTurn(audio=audio), params, mode=mode))
    finally:
        rec.close()
    return steps, rec.calls


@pytest.mark.parametrize("mode", ["s2s", "s2t"])
def test_cached_turn_equals_recompute(runtime, mode) -> None:
    a1, a2 = wav("audio_turn1.wav"), wav("audio_turn2.wav")
    cached = ConversationState()
    _run(runtime, cached, a1, mode=mode)
    turn1_len = cached.cached_tokens()
    steps_cached, calls_cached = _run(runtime, cached, a2, mode=mode)

    fresh = ConversationState()
    fresh.add_user_message(runtime, UserTurn(audio=a1), speech=mode == "s2s")
    fresh.add_assistant_message(cached.messages[2].content)
    steps_fresh, calls_fresh = _run(runtime, fresh, a2, mode=mode)

    full_len = fresh.cached_tokens()
    assert cached.cached_tokens() == full_len
    assert calls_fresh[0][0] == full_len  # recompute: whole prompt
    assert calls_cached[0][0] == full_len - turn1_len  # cached: only the new tokens
    assert steps_cached == steps_fresh
    for (_, lc), (_, lf) in zip(calls_cached, calls_fresh, strict=True):
        torch.testing.assert_close(lc, lf, atol=1e-4, rtol=1e-4)


def test_history_cap_recomputes(runtime) -> None:
    audios = [wav("audio_turn1.wav"), wav("audio_turn2.wav"), wav("audio_turn1.wav")]
    params = SamplingParams(top_k=1, max_steps=2)
    state = ConversationState(max_user_turns=2)
    lengths = []
    for audio in audios:
        _, calls = _run(runtime, state, audio, params)
        lengths.append((calls[0][0], state.cached_tokens()))
    assert [m.role for m in state.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert lengths[1][0] < lengths[1][1]  # turn 2 reused turn 1's cache
    assert lengths[2][0] == lengths[2][1]  # turn 3 dropped turn 1, so everything was recomputed
