"""Static-shape decode (``StaticDecodeBatch``) against the eager ``DecodeBatch``.

Both run the same schedule: rows join at different steps with different prompt lengths and
settings, leave when finished or cancelled, and the batch passes through several buckets with
padding rows. Tokens must be equal and every logits tensor a choice sees close in fp32.

Seeded sampling here is top-k limited: with the tiny random model's near-flat logits, a
full-vocabulary top-p draw orders ~10^5 almost equal probabilities, so a 1e-7 change in a logit
(any batch change, eager batched vs eager alone included) can move the draw to another token.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from tests.fac_golden import MODEL_DIR, TOKENIZER_DIR, wav
from utils.funaudiochat import (
    ConversationState,
    SamplingParams,
    Scheduler,
    UserTurn,
    decoding,
    load_model,
    stream_turn,
)
from utils.funaudiochat.decoding import DecodeBatch, StepResult
from utils.funaudiochat.session import PreparedTurn, prefill_prompt
from utils.funaudiochat.static_decode import (
    CudaGraphRunner,
    EagerRunner,
    StaticDecodeBatch,
    StaticDecodeConfig,
    make_runner,
    span_for,
)

LOGITS_TOL = 1e-5
BUCKETS = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class Spec:
    join: int  # decode step before which the row is prefilled and joins
    prompt_len: int
    params: SamplingParams
    cancel: int | None = None  # decode step before which the row is removed


def _greedy(steps: int, **kw) -> SamplingParams:
    return SamplingParams(top_k=1, max_steps=steps, **kw)


def _seeded(steps: int, seed: int, **kw) -> SamplingParams:
    return SamplingParams(top_k=20, temperature=0.7, seed=seed, max_steps=steps, **kw)


SPEECH_SPECS = [
    Spec(0, 8, _greedy(22)),  # outlives the others: the batch ends at one row
    Spec(0, 30, _seeded(12, 1)),
    Spec(1, 15, SamplingParams(do_sample=False, max_steps=9)),
    Spec(2, 22, _seeded(13, 2, speech=SamplingParams(top_k=30, seed=52))),  # own speech RNG
    Spec(2, 11, _greedy(5, penalty_window=4)),
    Spec(3, 27, _seeded(11, 3), cancel=7),
    Spec(4, 9, _greedy(4)),
    Spec(4, 33, _seeded(10, 4)),
    Spec(5, 18, _seeded(9, 5, repetition_penalty=1.0)),
    Spec(6, 25, _greedy(8), cancel=8),
    Spec(6, 12, _seeded(7, 6)),
    Spec(8, 20, _seeded(6, 7)),
    Spec(12, 14, _greedy(3)),  # joins a batch that has shrunk again
]


@pytest.fixture
def choices(monkeypatch) -> list[tuple[str, Tensor]]:
    """Every (kind, logits) a token choice sees, in order (prefill and decode alike)."""
    seen: list[tuple[str, Tensor]] = []
    real = decoding.choose

    def spy(logits: Tensor, rows, *, kind: str) -> Tensor:
        seen.append((kind, logits.clone()))
        return real(logits, rows, kind=kind)

    monkeypatch.setattr(decoding, "choose", spy)
    return seen


def _prefill(runtime, spec: Spec, i: int, speech: bool) -> PreparedTurn:
    gen = torch.Generator().manual_seed(100 + i)
    tok = runtime.tokens
    ids = torch.randint(0, 150000, (spec.prompt_len,), generator=gen).tolist()
    ids += [tok.audio_bos, *[tok.audio] * 6, tok.audio_eos, 198]
    rows = [torch.randn(6, runtime.config.hidden_size, generator=gen).to(runtime.device)]
    return prefill_prompt(runtime, ids, rows, spec.params, speech=speech)


def _drive(runtime, batch, specs: list[Spec], speech: bool) -> tuple[list[list[StepResult]], list[int]]:
    """Run the schedule; returns each spec's results and the batch size of every step."""
    out: list[list[StepResult]] = [[] for _ in specs]
    which: dict[int, int] = {}  # id(row) -> spec index
    sizes: list[int] = []
    last_join = max(s.join for s in specs)
    for step in range(100):
        for i, s in enumerate(specs):
            if s.join == step:
                prepared = _prefill(runtime, s, i, speech)
                out[i].append(prepared.first)
                if not prepared.row.finished:
                    batch.add(prepared.row, prepared.lm_cache, prepared.crq_cache)
                    which[id(prepared.row)] = i
            if s.cancel == step:
                batch.remove(next(r for r in batch.rows if which[id(r)] == i))
        if not len(batch):
            if step > last_join:
                break
            continue
        rows = list(batch.rows)
        sizes.append(len(rows))
        for r, result in zip(rows, batch.step()):
            out[which[id(r)]].append(result)
    assert not len(batch)
    return out, sizes


def _compare(runtime, choices, specs: list[Spec], *, speech: bool, config: StaticDecodeConfig,
             tol: float = LOGITS_TOL) -> list[int]:
    eager, sizes = _drive(runtime, DecodeBatch(runtime, speech=speech), specs, speech)
    eager_choices = list(choices)
    choices.clear()
    batch = StaticDecodeBatch(runtime, speech=speech, config=config)
    static, static_sizes = _drive(runtime, batch, specs, speech)
    if isinstance(batch.runner, CudaGraphRunner):
        assert batch.runner.num_graphs > 0
    assert static_sizes == sizes
    for i, (a, b) in enumerate(zip(eager, static)):
        assert a == b, f"row {i} differs"
    assert len(choices) == len(eager_choices)
    for (kind_a, a), (kind_b, b) in zip(eager_choices, choices):
        assert kind_a == kind_b and a.shape == b.shape
        torch.testing.assert_close(b, a, atol=tol, rtol=0)
    return sizes


def _assert_buckets_and_padding(sizes: list[int], config: StaticDecodeConfig) -> None:
    assert {config.bucket(n) for n in sizes} == set(BUCKETS)
    assert any(n not in BUCKETS for n in sizes)  # padding rows were present
    assert sizes.index(max(sizes)) < len(sizes) - 1 and sizes[-1] < max(sizes)  # and rows left


def test_speech_batch_matches_eager(runtime, choices) -> None:
    # max_len 32 and min_span 4: prompts up to 42 positions make the caches grow, and every
    # step crosses into other span buckets
    config = StaticDecodeConfig(batch_buckets=BUCKETS, max_len=32, min_span=4)
    sizes = _compare(runtime, choices, SPEECH_SPECS, speech=True, config=config)
    _assert_buckets_and_padding(sizes, config)
    assert sum(1 for kind, _ in choices if kind == "speech") > 5 * len(sizes)


def test_text_only_batch_matches_eager(runtime, choices) -> None:
    config = StaticDecodeConfig(batch_buckets=BUCKETS, max_len=64, min_span=16)
    sizes = _compare(runtime, choices, SPEECH_SPECS, speech=False, config=config)
    _assert_buckets_and_padding(sizes, config)
    assert all(kind == "text" for kind, _ in choices)


def test_compiled_pieces_trace_as_one_graph(runtime, choices) -> None:
    # fullgraph=True fails on any graph break (a .item(), a data-dependent shape): the property
    # a CUDA graph capture needs. The "eager" backend only traces, so this stays quick on CPU.
    config = StaticDecodeConfig(batch_buckets=(1, 2, 4), max_len=64, min_span=64, compile=True,
                                compile_backend="eager")
    specs = [Spec(0, 10, _greedy(4)), Spec(0, 20, _seeded(3, 1)), Spec(1, 15, _greedy(3))]
    _compare(runtime, choices, specs, speech=True, config=config)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graphs_match_eager_on_cuda(choices) -> None:
    # fp32 on the GPU: the comparison is about capture and replay, not bf16 rounding
    runtime = load_model(MODEL_DIR, tokenizer_path=TOKENIZER_DIR, device="cuda", dtype=torch.float32)
    config = StaticDecodeConfig(batch_buckets=BUCKETS, max_len=32, min_span=4, cuda_graphs=True)
    sizes = _compare(runtime, choices, SPEECH_SPECS, speech=True, config=config, tol=1e-4)
    _assert_buckets_and_padding(sizes, config)


def test_scheduler_with_static_shapes_matches_alone(runtime) -> None:
    a1, a2 = wav("audio_turn1.wav"), wav("audio_turn2.wav")
    turns = [(a1, _greedy(7)), (a2[:30000], _seeded(6, 3)), (a1[:20000], _greedy(5))]
    alone = [list(stream_turn(runtime, ConversationState(), UserTurn(audio=a), p)) for a, p in turns]
    sched = Scheduler(runtime, max_batch=4, static=StaticDecodeConfig(batch_buckets=(1, 2, 4)))
    sched.start()
    try:
        handles = [sched.submit(ConversationState(), UserTurn(audio=a), p) for a, p in turns]
        got = [list(h) for h in handles]
    finally:
        sched.stop()
    assert got == alone


def test_scheduler_refuses_a_batch_beyond_the_buckets(runtime) -> None:
    with pytest.raises(ValueError):
        Scheduler(runtime, max_batch=8, static=StaticDecodeConfig(batch_buckets=(1, 2, 4)))


def test_cuda_graphs_run_eagerly_off_cuda() -> None:
    config = StaticDecodeConfig(cuda_graphs=True)
    assert isinstance(make_runner(config, torch.device("cpu")), EagerRunner)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError):
            CudaGraphRunner(warmup=1)


def test_buckets_and_spans() -> None:
    config = StaticDecodeConfig(batch_buckets=(1, 2, 4, 8))
    assert [config.bucket(n) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    with pytest.raises(ValueError):
        config.bucket(9)
    assert [span_for(n, 256, 2048) for n in (1, 256, 257, 1500, 2048)] == [256, 256, 512, 2048, 2048]
    assert span_for(700, 256, 1000) == 1000  # capped at the preallocated length
    for bad in [dict(batch_buckets=()), dict(batch_buckets=(4, 2)), dict(min_span=0),
                dict(min_span=4096, max_len=2048), dict(warmup=0)]:
        with pytest.raises(ValueError):
            StaticDecodeConfig(**bad)
