"""Per-kind sampling settings: speech tokens with their own settings and RNG, and a repetition
penalty limited to the last N tokens (what upstream's browser client asks for per session)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tests.fac_golden import wav
from utils.funaudiochat import ConversationState, SamplingParams, UserTurn, stream_turn
from utils.funaudiochat.decoding import _windowed
from web_demo.server.engines.base import SamplingOptions
from web_demo.server.engines.funaudiochat import turn_sampling


def _turn(runtime, params: SamplingParams) -> tuple[list[int], list[list[int]]]:
    """(text tokens, speech groups) of one s2s turn on the tiny model."""
    steps = list(stream_turn(runtime, ConversationState(), UserTurn(audio=wav("audio_turn1.wav")[:24000]),
                             params, mode="s2s"))
    return [s.text_token for s in steps], [s.speech_tokens for s in steps if s.speech_tokens]


def test_speech_with_its_own_seed_does_not_depend_on_the_text_rng(runtime) -> None:
    # Greedy text by top_k=1 still draws from the text RNG each step; with a speech RNG of its
    # own, changing the text seed leaves the speech tokens alone.
    speech = SamplingParams(seed=7)
    a = _turn(runtime, SamplingParams(top_k=1, seed=1, max_steps=8, speech=speech))
    b = _turn(runtime, SamplingParams(top_k=1, seed=2, max_steps=8, speech=speech))
    assert a == b and a[1]
    other = _turn(runtime, SamplingParams(top_k=1, seed=1, max_steps=8, speech=replace(speech, seed=8)))
    assert other[1] != a[1]


def test_greedy_speech_settings_are_used_for_speech_tokens(runtime) -> None:
    greedy = SamplingParams(do_sample=False)
    a = _turn(runtime, SamplingParams(top_k=1, seed=1, max_steps=8, speech=replace(greedy, seed=1)))
    b = _turn(runtime, SamplingParams(top_k=1, seed=1, max_steps=8, speech=replace(greedy, seed=99)))
    assert a == b  # no draws at all: the seed cannot matter


def test_a_window_as_long_as_the_context_penalises_like_the_whole_context(runtime) -> None:
    base = SamplingParams(seed=3, max_steps=8, repetition_penalty=1.5)
    assert _turn(runtime, replace(base, penalty_window=100_000)) == _turn(runtime, base)


def test_a_short_window_changes_what_is_penalised(runtime) -> None:
    base = SamplingParams(top_k=1, seed=3, max_steps=10, repetition_penalty=50.0)
    assert _turn(runtime, replace(base, penalty_window=1)) != _turn(runtime, base)


def test_windowed_mask_holds_only_the_last_tokens() -> None:
    seen = torch.ones(10, dtype=torch.bool)
    assert _windowed(seen, [1, 2, 3], None) is seen
    assert _windowed(seen, [1, 2, 3, 2], 2).nonzero().flatten().tolist() == [2, 3]
    assert not _windowed(seen, [], 4).any()
    with pytest.raises(ValueError, match="penalty_window"):
        SamplingParams(penalty_window=0)


def test_session_options_map_onto_text_and_speech_settings() -> None:
    base = SamplingParams(temperature=0.8, top_p=0.9, repetition_penalty=1.2, max_steps=99)
    assert turn_sampling(base, None) is base
    params = turn_sampling(base, SamplingOptions(
        text_temperature=0.7, text_top_k=25, speech_temperature=0.0, speech_top_k=250,
        text_seed=5, speech_seed=None, repetition_penalty=1.0, repetition_window=64))
    assert (params.temperature, params.top_k, params.seed, params.do_sample) == (0.7, 25, 5, True)
    assert (params.repetition_penalty, params.penalty_window, params.max_steps) == (1.0, 64, 99)
    speech = params.speech
    assert speech is not None and speech.speech is None
    assert (speech.do_sample, speech.top_k, speech.seed, speech.temperature) == (False, 250, None, 0.8)
    assert (speech.repetition_penalty, speech.penalty_window, speech.top_p) == (1.0, 64, 0.9)
    only_seed = turn_sampling(base, SamplingOptions(speech_seed=4))
    assert only_seed.speech is not None and only_seed.speech.seed == 4
    assert (only_seed.temperature, only_seed.top_k, only_seed.do_sample) == (0.8, 0, True)


def test_a_clients_max_text_tokens_caps_the_decode_steps(runtime) -> None:
    base = SamplingParams(top_k=1, seed=1, max_steps=12)
    assert turn_sampling(base, SamplingOptions(max_text_tokens=50)).max_steps == 12  # under the engine's
    capped = turn_sampling(base, SamplingOptions(max_text_tokens=3))
    assert capped.max_steps == 3
    assert len(_turn(runtime, capped)[0]) == 3  # one text token per decode step, then the turn ends
