"""Continuous batching of the speech-token LLM (utils/cosyvoice3/tts_scheduler.py): requests of
different layouts (zero-shot, cross-lingual, instruct2) and lengths decoded in one batch give
exactly the tokens they give alone and the goldens', greedy and seeded RAS; joining mid-flight,
cancelling, max_batch, the thread driver and async streams."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import cache

import pytest
import torch

from tests.tts_golden import LOGP_ATOL, case, max_diff, tiny_lm
from utils.cosyvoice3.llm_decode import DecodeStep, LengthLimits, TokenDecoder
from utils.cosyvoice3.ras_sampling import GREEDY, RasConfig, SamplingFailed
from utils.cosyvoice3.tts_scheduler import TokenStream, TTSScheduler

RAS_SEED = 1986  # llm_generate_ras


@dataclass(frozen=True)
class Req:
    name: str
    lm_input: torch.Tensor  # [1, L, D]
    limits: LengthLimits


@cache
def requests() -> dict[str, Req]:
    """The goldens' prompts: 5 layouts/lengths (lm_input of 130, 121, 124, 43 and 68 positions)."""
    lm, f, g = tiny_lm(), case("llm_forward"), case("llm_generate_greedy")
    out = {}
    with torch.inference_mode():
        for name, ids in [("zero_shot", f["tts_text"].tolist()), ("max_len", g["maxlen.tts_text"].tolist()),
                          ("min_len_fail", g["minlen_fail.tts_text"].tolist())]:
            x = lm.build_lm_input(ids, prompt_text_ids=f["prompt_text"].tolist(),
                                  prompt_speech_ids=f["prompt_speech_token"].tolist())
            out[name] = Req(name, x, LengthLimits.for_text(len(ids), lm.cfg))
        cross = g["cross_lingual.llm_text"].tolist()
        out["cross_lingual"] = Req("cross_lingual", lm.build_lm_input(cross),
                                   LengthLimits.for_text(len(cross), lm.cfg))
        ins = g["instruct2.llm_text"].tolist()
        out["instruct2"] = Req("instruct2", lm.build_lm_input(ins[54:], prompt_text_ids=ins[:54]),
                               LengthLimits.for_text(len(ins) - 54, lm.cfg))
    return out


@dataclass
class Run:
    steps: list[DecodeStep]
    error: Exception | None

    @property
    def tokens(self) -> list[int]:
        return [s.token for s in self.steps if s.token is not None]


def alone(req: Req, sampler: RasConfig | None, seed: int = 0) -> Run:
    decoder = TokenDecoder(tiny_lm(), req.lm_input, req.limits, sampler=sampler,
                           generator=torch.Generator().manual_seed(seed))
    steps: list[DecodeStep] = []
    try:
        while not decoder.finished:
            steps.append(decoder.step())
    except SamplingFailed as exc:
        return Run(steps, exc)
    return Run(steps, None)


def collect(stream: TokenStream) -> Run:
    assert stream.done.is_set()
    steps: list[DecodeStep] = []
    try:
        steps.extend(stream.steps())
    except SamplingFailed as exc:
        return Run(steps, exc)
    return Run(steps, None)


def drain(s: TTSScheduler, max_active: list[int] | None = None) -> None:
    while s.has_work:
        s.step()
        if max_active is not None:
            max_active.append(s.num_active)


def assert_same(got: Run, want: Run) -> None:
    assert got.tokens == want.tokens
    assert [s.sampled for s in got.steps] == [s.sampled for s in want.steps]  # draws, trials, fallbacks
    assert type(got.error) is type(want.error)
    diffs = [max_diff(a.logp, b.logp) for a, b in zip(got.steps, want.steps, strict=True)]
    assert max(diffs, default=0.0) <= LOGP_ATOL


GREEDY_GOLDEN = {"zero_shot": "greedy.tokens", "max_len": "maxlen.tokens",
                 "min_len_fail": "minlen_fail.tokens", "cross_lingual": "cross_lingual.tokens",
                 "instruct2": "instruct2.tokens"}
GREEDY_END = {"zero_shot": "stop", "max_len": "max_len", "min_len_fail": "error", "cross_lingual": "error",
              "instruct2": "stop"}


def test_greedy_batch_of_five_layouts_gives_the_golden_tokens() -> None:
    s = TTSScheduler(tiny_lm(), max_batch=8, prefills_per_step=8)
    streams = {name: s.submit(r.lm_input, r.limits, sampler=GREEDY) for name, r in requests().items()}
    drain(s)
    g = case("llm_generate_greedy")
    runs = {name: collect(stream) for name, stream in streams.items()}
    for name, stream in streams.items():
        assert runs[name].tokens == stream.tokens == g[GREEDY_GOLDEN[name]].tolist(), name
        assert stream.end == GREEDY_END[name], name
        assert_same(runs[name], alone(requests()[name], GREEDY))
    cross = runs["cross_lingual"]
    assert isinstance(cross.error, SamplingFailed) and not cross.steps  # failed at its prefill step
    assert s.num_active == 0 and not s.has_work


def test_seeded_ras_batched_equals_alone_and_the_golden_run() -> None:
    """Every request has its own generator: 1986 reproduces the golden run among the others."""
    seeds = {"zero_shot": RAS_SEED, "max_len": 1, "min_len_fail": 2, "cross_lingual": 3, "instruct2": 4}
    s = TTSScheduler(tiny_lm(), max_batch=8, prefills_per_step=8)
    reqs = requests()
    streams = {n: s.submit(reqs[n].lm_input, reqs[n].limits, seed=seed) for n, seed in seeds.items()}
    drain(s)
    runs = {name: collect(stream) for name, stream in streams.items()}
    for name, run in runs.items():
        assert_same(run, alone(requests()[name], None, seeds[name]))
    r = case("llm_generate_ras")
    assert streams["zero_shot"].tokens == runs["zero_shot"].tokens == r["tokens"].tolist()
    assert [st.sampled.token for st in runs["zero_shot"].steps] == r["step_out"].tolist()


def test_rows_with_different_samplers_share_a_batch() -> None:
    """The batch computes one sampler Distribution per row for the largest top_k; rows with a
    smaller top_k (greedy, 5) or a larger one (60) still draw exactly what they draw alone."""
    samplers = {"zero_shot": RasConfig(top_k=60, top_p=0.95), "max_len": GREEDY,
                "instruct2": RasConfig(top_k=5, top_p=0.5), "min_len_fail": None}
    s = TTSScheduler(tiny_lm(), max_batch=8, prefills_per_step=8)
    reqs = requests()
    streams = {n: s.submit(reqs[n].lm_input, reqs[n].limits, sampler=cfg, seed=7)
               for n, cfg in samplers.items()}
    drain(s)
    for name, stream in streams.items():
        assert_same(collect(stream), alone(reqs[name], samplers[name], 7))


def test_same_seed_twice_in_one_batch_gives_two_identical_runs() -> None:
    req = requests()["zero_shot"]
    s = TTSScheduler(tiny_lm())
    a, b = (s.submit(req.lm_input, req.limits, seed=RAS_SEED) for _ in range(2))
    drain(s)
    assert a.tokens == b.tokens == case("llm_generate_ras")["tokens"].tolist()


def test_requests_join_mid_flight() -> None:
    reqs = requests()
    s = TTSScheduler(tiny_lm(), prefills_per_step=1)
    first = s.submit(reqs["instruct2"].lm_input, reqs["instruct2"].limits, seed=4)
    for _ in range(10):
        s.step()
    second = s.submit(reqs["zero_shot"].lm_input, reqs["zero_shot"].limits, seed=RAS_SEED)
    third = s.submit(reqs["max_len"].lm_input, reqs["max_len"].limits, sampler=GREEDY)
    s.step()  # one prefill per step: second joins now, third one step later
    assert (s.num_active, s.num_pending) == (2, 1)
    assert len(first.tokens) == 12  # its prefill token and a batched one in the first step, then 1 each
    for _ in range(7):
        s.step()
    fourth = s.submit(reqs["zero_shot"].lm_input, reqs["zero_shot"].limits, sampler=GREEDY)
    drain(s)
    assert_same(collect(first), alone(reqs["instruct2"], None, 4))
    assert second.tokens == case("llm_generate_ras")["tokens"].tolist()
    assert third.tokens == case("llm_generate_greedy")["maxlen.tokens"].tolist() and third.end == "max_len"
    assert fourth.tokens == case("llm_generate_greedy")["greedy.tokens"].tolist()


def test_cancel_active_and_queued_requests() -> None:
    reqs = requests()
    s = TTSScheduler(tiny_lm(), max_batch=2, prefills_per_step=2)
    keep = s.submit(reqs["zero_shot"].lm_input, reqs["zero_shot"].limits, seed=RAS_SEED)
    gone = s.submit(reqs["instruct2"].lm_input, reqs["instruct2"].limits, sampler=GREEDY)
    queued = s.submit(reqs["max_len"].lm_input, reqs["max_len"].limits, sampler=GREEDY)
    for _ in range(5):
        s.step()
    gone.cancel()
    queued.cancel()
    s.step()
    assert gone.end == queued.end == "cancelled" and gone.done.is_set()
    assert s.num_active == 1 and s.num_pending == 0
    drain(s)
    assert gone.tokens == case("llm_generate_greedy")["instruct2.tokens"].tolist()[:6]  # prefill + 5 steps
    assert list(gone) == gone.tokens and list(queued) == []
    assert keep.tokens == case("llm_generate_ras")["tokens"].tolist() and keep.end == "stop"
    keep.cancel()  # after the end: nothing happens
    assert not s.has_work


def test_max_batch_bounds_the_active_rows() -> None:
    reqs = requests()
    s = TTSScheduler(tiny_lm(), max_batch=2, prefills_per_step=4)
    names = ["zero_shot", "max_len", "instruct2", "zero_shot"]
    streams = [s.submit(reqs[n].lm_input, reqs[n].limits, sampler=GREEDY) for n in names]
    active: list[int] = []
    drain(s, active)
    assert max(active) == 2 and s.num_active == 0
    g = case("llm_generate_greedy")
    assert [st.tokens for st in streams] == [g[GREEDY_GOLDEN[n]].tolist() for n in names]


def test_zero_max_len_runs_no_step() -> None:
    s = TTSScheduler(tiny_lm())
    stream = s.submit(requests()["zero_shot"].lm_input, LengthLimits(0, 0))
    drain(s)
    assert stream.end == "max_len" and list(stream) == []


def test_thread_driver_streams_tokens() -> None:
    reqs = requests()
    s = TTSScheduler(tiny_lm(), max_batch=4)
    s.start()
    try:
        a = s.submit(reqs["zero_shot"].lm_input, reqs["zero_shot"].limits, seed=RAS_SEED)
        b = s.submit(reqs["instruct2"].lm_input, reqs["instruct2"].limits, sampler=GREEDY)
        c = s.submit(reqs["min_len_fail"].lm_input, reqs["min_len_fail"].limits, sampler=GREEDY)
        with pytest.raises(RuntimeError, match="thread is running"):
            s.step()
        assert list(a) == case("llm_generate_ras")["tokens"].tolist()
        assert list(b) == case("llm_generate_greedy")["instruct2.tokens"].tolist()
        got: list[int] = []
        with pytest.raises(SamplingFailed):
            got.extend(c)
        assert got == case("llm_generate_greedy")["minlen_fail.tokens"].tolist() and c.end == "error"
    finally:
        s.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        s.submit(reqs["zero_shot"].lm_input, reqs["zero_shot"].limits)


def test_stop_ends_open_streams() -> None:
    req = requests()["zero_shot"]
    s = TTSScheduler(tiny_lm())
    stream = s.submit(req.lm_input, req.limits, sampler=GREEDY)
    s.step()
    s.stop()
    assert stream.end == "cancelled" and list(stream) == stream.tokens and len(stream.tokens) == 2


def test_async_stream() -> None:
    req = requests()["zero_shot"]
    s = TTSScheduler(tiny_lm())
    s.start()

    async def main() -> list[int]:
        stream = s.submit(req.lm_input, req.limits, seed=RAS_SEED)
        with pytest.raises(RuntimeError, match="event loop"):
            next(iter(stream))
        return [t async for t in stream]

    try:
        assert asyncio.run(main()) == case("llm_generate_ras")["tokens"].tolist()
    finally:
        s.stop()
