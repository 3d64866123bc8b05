"""Single-session streaming API: modes, sampling defaults, seeds and cancellation."""

from __future__ import annotations

import itertools

import torch

from tests.fac_golden import wav
from utils.funaudiochat import ConversationState, SamplingParams, UserTurn, stream_turn
from utils.funaudiochat.prompt import S2T_SYSTEM_PROMPT, SPOKEN_S2M_SYSTEM_PROMPT
from utils.funaudiochat.sampling import ChoiceRow, choose, make_generator

BOS, SIL, CODES = 151670, 151673, 6561


def test_server_defaults() -> None:
    p = SamplingParams()
    assert (p.temperature, p.top_p, p.top_k, p.repetition_penalty, p.max_steps) == (0.8, 0.9, 0, 1.2, 512)
    assert p.do_sample and p.ban_sil_after_bos and not p.text_greedy


def test_sil_banned_right_after_audio_bos() -> None:
    logits = torch.zeros(1, 151936)
    logits[0, SIL] = 10.0
    seen = torch.zeros(151936, dtype=torch.bool)
    gen = make_generator(0, torch.device("cpu"))
    row = ChoiceRow(SamplingParams(do_sample=False), gen, seen, [1, BOS], SIL)
    assert choose(logits, [row], kind="text").item() != SIL
    row.ban_token = None
    assert choose(logits, [row], kind="text").item() == SIL


def test_s2s_stream_with_seed_is_reproducible(runtime) -> None:
    audio = wav("audio_turn1.wav")
    params = SamplingParams(seed=7, max_steps=6)

    def run() -> list:
        state = ConversationState()
        steps = list(stream_turn(runtime, state, UserTurn(audio=audio), params, mode="s2s"))
        assert state.messages[0].content == SPOKEN_S2M_SYSTEM_PROMPT
        return steps

    first, second = run(), run()
    assert first == second
    assert len(first) == 6 and first[-1].finished and not any(s.finished for s in first[:-1])
    assert first[0].text_token == BOS and first[0].speech_tokens is None
    for s in first[1:]:
        assert s.speech_tokens is not None and len(s.speech_tokens) == 5
        assert isinstance(s.text_piece, str)
    other = list(stream_turn(runtime, ConversationState(), UserTurn(audio=audio),
                             SamplingParams(seed=8, max_steps=6)))
    assert [s.speech_tokens for s in other] != [s.speech_tokens for s in first]


def test_s2t_stream_has_no_speech(runtime) -> None:
    state = ConversationState()
    steps = list(stream_turn(runtime, state, UserTurn(audio=wav("audio_turn1.wav")),
                             SamplingParams(max_steps=4, seed=1), mode="s2t"))
    assert len(steps) == 4 and all(s.speech_tokens is None for s in steps)
    assert state.messages[0].content == S2T_SYSTEM_PROMPT
    assert state.messages[-1].role == "assistant"


def test_cancel_between_steps_frees_turn_and_keeps_history(runtime) -> None:
    state = ConversationState()
    stream = stream_turn(runtime, state, UserTurn(audio=wav("audio_turn1.wav")), SamplingParams(top_k=1))
    taken = list(itertools.islice(stream, 3))
    assert state.busy and len(taken) == 3
    stream.close()
    assert not state.busy and state._row is None
    assert len(state.last_generated_ids) == 3 and state.messages[-1].role == "assistant"
    # the conversation goes on, reusing the cached prefix
    cached = state.cached_tokens()
    more = list(stream_turn(runtime, state, UserTurn(audio=wav("audio_turn2.wav")),
                            SamplingParams(top_k=1, max_steps=2)))
    assert len(more) == 2 and state.cached_tokens() > cached
