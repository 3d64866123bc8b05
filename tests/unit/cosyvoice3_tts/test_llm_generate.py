"""Speech-token decoding against upstream's goldens (cases llm_generate_greedy,
llm_generate_ras): greedy steps, layouts, the length rules, the min_len failure, seeded RAS."""

from __future__ import annotations

import json

import pytest
import torch

from tests.tts_golden import HIDDEN_ATOL, LOGP_ATOL, case, case_metadata, max_diff, tiny_lm
from utils.cosyvoice3.llm_decode import DecodeStep, LengthLimits, TokenDecoder, generate_speech_tokens
from utils.cosyvoice3.ras_sampling import GREEDY, SampledId, SamplingFailed, sampling_ids

GREEDY_NOTES = json.loads(case_metadata("llm_generate_greedy")["notes"])
RAS_NOTES = json.loads(case_metadata("llm_generate_ras")["notes"])
MAX_TRIALS_ERROR = "sampling reaches max_trials 100 and still get eos when ignore_eos is True"


def zero_shot(tts_ids: list[int]) -> tuple[torch.Tensor, LengthLimits]:
    """The zero-shot prompt of the goldens (llm_forward) with another tts text."""
    f, lm = case("llm_forward"), tiny_lm()
    x = lm.build_lm_input(tts_ids, prompt_text_ids=f["prompt_text"].tolist(),
                          prompt_speech_ids=f["prompt_speech_token"].tolist())
    return x, LengthLimits.for_text(len(tts_ids), lm.cfg)


def run(decoder: TokenDecoder) -> list[DecodeStep]:
    steps = []
    while not decoder.finished:
        steps.append(decoder.step())
    return steps


def test_greedy_zero_shot_steps() -> None:
    g, notes = case("llm_generate_greedy"), GREEDY_NOTES["greedy"]
    x, limits = zero_shot(case("llm_forward")["tts_text"].tolist())
    assert (limits.min_len, limits.max_len) == (notes["min_len"], notes["max_len"]) == (24, 240)
    decoder = TokenDecoder(tiny_lm(), x, limits, sampler=GREEDY)
    steps = run(decoder)
    assert len(steps) == notes["n_steps"] == 46
    assert max(max_diff(s.logp, g["greedy.step_logp"][i]) for i, s in enumerate(steps)) <= LOGP_ATOL
    assert max(max_diff(s.hidden, g["greedy.step_hidden"][i]) for i, s in enumerate(steps)) <= HIDDEN_ATOL
    assert [int(s.logp.argmax()) for s in steps] == g["greedy.step_argmax"].tolist()
    assert [s.sampled.token for s in steps] == g["greedy.step_argmax"].tolist()
    assert decoder.tokens == g["greedy.tokens"].tolist()
    assert (steps[-1].token, steps[-1].sampled.token, decoder.end) == (None, 6602, "stop")


def test_streaming_generator_yields_the_greedy_tokens_one_by_one() -> None:
    x, limits = zero_shot(case("llm_forward")["tts_text"].tolist())
    stream = generate_speech_tokens(tiny_lm(), x, limits, sampler=GREEDY)
    first = next(stream)  # available before the rest is decoded
    assert [first, *stream] == case("llm_generate_greedy")["greedy.tokens"].tolist()


def test_max_len_rule() -> None:
    g, notes = case("llm_generate_greedy"), GREEDY_NOTES["maxlen"]
    x, limits = zero_shot(g["maxlen.tts_text"].tolist())  # "OK.": n = 3
    assert (limits.min_len, limits.max_len) == (notes["min_len"], notes["max_len"]) == (6, 60)
    decoder = TokenDecoder(tiny_lm(), x, limits, sampler=GREEDY)
    steps = run(decoder)
    assert len(steps) == notes["n_steps"] == 60
    assert decoder.tokens == g["maxlen.tokens"].tolist()
    assert decoder.end == "max_len"


def test_min_len_failure_mode() -> None:
    g, notes = case("llm_generate_greedy"), GREEDY_NOTES["minlen_fail"]
    x, limits = zero_shot(g["minlen_fail.tts_text"].tolist())  # "Hello.": n = 6
    assert limits.min_len == notes["min_len"] == 12
    got: list[int] = []
    with pytest.raises(SamplingFailed, match=MAX_TRIALS_ERROR):
        got.extend(generate_speech_tokens(tiny_lm(), x, limits, sampler=GREEDY))
    assert got == g["minlen_fail.tokens"].tolist()  # what upstream's tts() would still vocode
    # the failing step (recomputed without a cache): its log-probs, whose argmax is a stop id
    with torch.no_grad():
        logp, _, _ = tiny_lm().step(torch.cat([x, tiny_lm().embed_speech(got)], dim=1))
    assert max_diff(logp[0], g["minlen_fail.last_logp"]) <= LOGP_ATOL
    assert int(g["minlen_fail.last_logp"].argmax()) >= 6561


def test_cross_lingual_fails_at_step_zero() -> None:
    g, notes = case("llm_generate_greedy"), GREEDY_NOTES["cross_lingual"]
    lm = tiny_lm()
    ids = g["cross_lingual.llm_text"].tolist()
    limits = LengthLimits.for_text(len(ids), lm.cfg)  # no prompt text: all 41 ids count
    assert (limits.min_len, limits.max_len) == (notes["min_len"], notes["max_len"]) == (82, 820)
    x = lm.build_lm_input(ids)
    with torch.no_grad():
        logp, _, _ = lm.step(x)
    assert max_diff(logp[0], g["cross_lingual.logp_first"]) <= LOGP_ATOL
    got: list[int] = []
    with pytest.raises(SamplingFailed, match=MAX_TRIALS_ERROR):
        got.extend(generate_speech_tokens(lm, x, limits, sampler=GREEDY))
    assert got == g["cross_lingual.tokens"].tolist() == []


def test_instruct2_greedy() -> None:
    g, notes = case("llm_generate_greedy"), GREEDY_NOTES["instruct2"]
    lm = tiny_lm()
    ids = g["instruct2.llm_text"].tolist()
    x = lm.build_lm_input(ids[54:], prompt_text_ids=ids[:54])
    limits = LengthLimits.for_text(len(ids) - 54, lm.cfg)  # instruct text excluded
    assert (limits.min_len, limits.max_len) == (notes["min_len"], notes["max_len"])
    decoder = TokenDecoder(lm, x, limits, sampler=GREEDY)
    steps = run(decoder)
    assert max_diff(steps[0].logp, g["instruct2.logp_first"]) <= LOGP_ATOL
    assert len(steps) == notes["n_steps"] == 104
    assert decoder.tokens == g["instruct2.tokens"].tolist()
    assert steps[-1].sampled.token == notes["last_step_out"] == 6757


def _assert_ras_trace(draws: list[SampledId], tokens: list[int]) -> None:
    r = case("llm_generate_ras")
    assert tokens == r["tokens"].tolist()
    assert [d.token for d in draws] == r["step_out"].tolist()  # ends with stop id 6680
    assert [d.draw.nucleus_size for d in draws] == r["step_nucleus_size"].tolist()
    assert [int(d.draw.fallback) for d in draws] == r["step_fallback"].tolist()
    assert [d.trials for d in draws] == r["step_n_trials"].tolist()


def test_ras_seed_1986_end_to_end() -> None:
    r, notes = case("llm_generate_ras"), RAS_NOTES
    x, limits = zero_shot(case("llm_forward")["tts_text"].tolist())
    assert max_diff(x, r["lm_input"]) == 0.0
    assert (limits.min_len, limits.max_len) == (notes["min_len"], notes["max_len"])
    torch.manual_seed(notes["seed"])  # upstream seeds right before CosyVoice3LM.inference
    decoder = TokenDecoder(tiny_lm(), x, limits)  # the config's sampler: top_p 0.8, top_k 25
    steps = run(decoder)
    assert len(steps) == notes["n_steps"] == 32 and decoder.end == "stop"
    assert max(max_diff(s.logp, r["step_logp_first40"][i]) for i, s in enumerate(steps)) <= LOGP_ATOL
    _assert_ras_trace([s.sampled for s in steps], decoder.tokens)
    assert sum(s.sampled.draw.fallback for s in steps) == notes["n_fallbacks"] == 2
    assert sum(s.sampled.trials - 1 for s in steps) == notes["n_extra_trials"] == 2


def test_ras_replay_on_the_golden_log_probs() -> None:
    """The sampler alone, fed upstream's own log-probs: exact whatever the CPU's fp32 kernels."""
    r, cfg = case("llm_generate_ras"), tiny_lm().cfg
    torch.manual_seed(RAS_NOTES["seed"])
    tokens: list[int] = []
    draws: list[SampledId] = []
    for i, logp in enumerate(r["step_logp_first40"]):
        draws.append(sampling_ids(logp, tokens, cfg.sampler, ignore_eos=i < RAS_NOTES["min_len"]))
        if draws[-1].token in cfg.stop_token_ids:
            break
        tokens.append(draws[-1].token)
    _assert_ras_trace(draws, tokens)


def test_ras_with_a_request_generator() -> None:
    """A served request's own generator gives the same run and leaves the global one alone."""
    x, limits = zero_shot(case("llm_forward")["tts_text"].tolist())
    torch.manual_seed(7)
    before = torch.get_rng_state()
    gen = torch.Generator().manual_seed(RAS_NOTES["seed"])
    tokens = list(generate_speech_tokens(tiny_lm(), x, limits, generator=gen))
    assert tokens == case("llm_generate_ras")["tokens"].tolist()
    assert torch.equal(torch.get_rng_state(), before)


def test_length_limits_truncate_and_zero_max_len_runs_no_step() -> None:
    cfg = tiny_lm().cfg
    assert LengthLimits.for_text(0, cfg) == LengthLimits(0, 0)
    x, _ = zero_shot([46])
    decoder = TokenDecoder(tiny_lm(), x, LengthLimits(0, 0))
    assert decoder.finished and decoder.end == "max_len"
    assert list(generate_speech_tokens(tiny_lm(), x, LengthLimits(0, 0))) == []
