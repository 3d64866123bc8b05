"""Batched token2wav: every stream's audio equals its alone output, whoever it shares steps with."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.cv3_golden import FLOW_ATOL, MODEL_DIR, SINE_SAMPLES, SPEECH_ATOL, assert_close
from tests.cv3_plans import Plan
from utils.cosyvoice3 import Token2Wav
from utils.cosyvoice3.batched_stream import BatchedToken2Wav, StreamWork
from utils.cosyvoice3.streaming import CachedStream

PLANS = [
    Plan(n_tokens=130, start=0, push=25, seed=1),  # chunk-aligned pushes
    Plan(n_tokens=101, start=1, push=25, seed=2, finish_alone=True),  # one chunk behind: other cache lengths
    Plan(n_tokens=77, start=0, push=7, seed=3),  # short last chunk
    Plan(n_tokens=140, start=3, push=25, seed=4, cancel_at=4),  # cancelled mid-way
    Plan(n_tokens=64, start=2, push=64, seed=5),  # everything at once: several chunks per round
    Plan(n_tokens=10, start=5, push=3, seed=6),  # shorter than one chunk
]


def _alone(model: Token2Wav, plan: Plan) -> tuple[list[np.ndarray], list[torch.Tensor]]:
    """Per round output of the stream run alone, and the mels its vocoder received."""
    mels: list[torch.Tensor] = []
    stream = model.new_stream("cached", embedding=plan.embedding())
    assert isinstance(stream, CachedStream)
    vocode = stream._vocode

    def spy(mel: torch.Tensor, *, finalize: bool) -> np.ndarray:
        mels.append(mel.clone())
        return vocode(mel, finalize=finalize)

    stream._vocode = spy  # type: ignore[method-assign]
    out = [stream.push(g) for g in plan.groups()]
    out[-1] = np.concatenate([out[-1], stream.finalize()])
    return out, mels


def _run_batched(model: Token2Wav, plans: list[Plan], monkeypatch: pytest.MonkeyPatch):
    batched = BatchedToken2Wav(model)
    streams = [model.new_stream("cached", embedding=p.embedding()) for p in plans]
    mels: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(plans))}
    positions: list[list[int]] = []  # stream.done of the rows of each flow solve
    index = {id(s): i for i, s in enumerate(streams)}
    vocode, flow_chunks = batched._vocode, batched._flow_chunks

    def spy_vocode(items, *, finalize):
        for job, mel in items:
            mels[index[id(job.stream)]].append(mel.clone())
        return vocode(items, finalize=finalize)

    def spy_flow(rows):
        positions.append([job.stream.done for job, _ in rows])
        return flow_chunks(rows)

    monkeypatch.setattr(batched, "_vocode", spy_vocode)
    monkeypatch.setattr(batched, "_flow_chunks", spy_flow)
    outs: list[list[np.ndarray]] = [[] for _ in plans]
    groups = [p.groups() for p in plans]
    rnd = 0
    while True:
        work, who = [], []
        for i, (plan, stream) in enumerate(zip(plans, streams)):
            k = rnd - plan.start
            if k < 0 or stream.finalized or (plan.cancel_at is not None and rnd > plan.cancel_at):
                continue
            last = k >= len(groups[i]) - 1
            if plan.finish_alone and k == len(groups[i]):
                work.append(StreamWork(stream, (), finalize=True))
            else:
                work.append(StreamWork(stream, groups[i][k], finalize=last and not plan.finish_alone))
            who.append(i)
        if not work:
            break
        for i, pcm in zip(who, batched.advance(work)):
            assert isinstance(pcm, np.ndarray), pcm
            outs[i].append(pcm)
        rnd += 1
    return streams, outs, mels, positions


def test_each_stream_equals_its_alone_output(model: Token2Wav, monkeypatch: pytest.MonkeyPatch) -> None:
    vocoder_rows: list[int] = []
    step_rows = model.hift.step_rows

    def spy(mel, *args, **kwargs):
        vocoder_rows.append(mel.shape[0])
        return step_rows(mel, *args, **kwargs)

    monkeypatch.setattr(model.hift, "step_rows", spy)
    streams, outs, mels, positions = _run_batched(model, PLANS, monkeypatch)
    monkeypatch.undo()
    assert max(len(p) for p in positions) >= 3  # streams really shared solves...
    assert any(len(set(p)) > 1 for p in positions)  # ...at different points of their replies
    assert max(vocoder_rows) >= 2  # and vocoder steps
    for i, plan in enumerate(PLANS):
        want, want_mels = _alone(model, plan)
        got = outs[i]
        if plan.finish_alone:  # the tail came in a round of its own
            got = [*got[:-2], np.concatenate(got[-2:])]
        if plan.cancel_at is not None:
            rounds = plan.cancel_at - plan.start + 1
            want, got = want[:rounds], got[:rounds]
            want_mels = want_mels[:len(mels[i])]
            assert not streams[i].finalized
        else:
            assert streams[i].finalized and streams[i].samples_emitted == 960 * plan.n_tokens
        assert [len(c) for c in got] == [len(c) for c in want], f"stream {i} chunking"
        assert_close(torch.cat(mels[i], dim=2), torch.cat(want_mels, dim=2), FLOW_ATOL, f"stream {i} mel")
        assert_close(np.concatenate(got), torch.from_numpy(np.concatenate(want)), SPEECH_ATOL,
                     f"stream {i} speech")


def test_left_chunk_limit_per_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """With one left chunk, rows drop old keys at their own positions."""
    limited = Token2Wav.from_model_dir(MODEL_DIR, sine_samples=SINE_SAMPLES, left_chunks=1)
    plans = [Plan(n_tokens=120, start=0, push=25, seed=7), Plan(n_tokens=90, start=2, push=25, seed=8)]
    streams, outs, _, _ = _run_batched(limited, plans, monkeypatch)
    for i, plan in enumerate(plans):
        want, _ = _alone(limited, plan)
        assert_close(np.concatenate(outs[i]), torch.from_numpy(np.concatenate(want)), SPEECH_ATOL,
                     f"stream {i}")
    assert all(layer.visible <= 100 for s in streams for c in s.caches for layer in c.layers)


def test_errors_stay_with_their_stream(model: Token2Wav) -> None:
    batched = BatchedToken2Wav(model)
    plan = Plan(n_tokens=40, start=0, push=40, seed=9)
    good = model.new_stream("cached", embedding=plan.embedding())
    done = model.new_stream("cached", embedding=plan.embedding())
    done.finalize()
    native = model.new_stream("upstream-native", embedding=plan.embedding())
    empty = model.new_stream("cached", embedding=plan.embedding())
    out = batched.advance([StreamWork(good, plan.tokens(), finalize=True), StreamWork(done, [1, 2]),
                           StreamWork(native, [1]), StreamWork(empty, (), finalize=True)])
    want, _ = _alone(model, plan)
    assert isinstance(out[0], np.ndarray)
    assert_close(out[0], torch.from_numpy(want[0]), SPEECH_ATOL, "good stream")
    assert isinstance(out[1], RuntimeError) and isinstance(out[2], TypeError)
    assert isinstance(out[3], np.ndarray) and out[3].size == 0  # nothing pushed, nothing to say
    with pytest.raises(ValueError, match="once"):
        batched.advance([StreamWork(good, [1]), StreamWork(good, [2])])
    with pytest.raises(ValueError):
        BatchedToken2Wav(model, max_rows=0)


def test_row_limit_splits_a_round(model: Token2Wav, monkeypatch: pytest.MonkeyPatch) -> None:
    plans = [Plan(n_tokens=60, start=0, push=30, seed=s) for s in range(10, 13)]
    batched = BatchedToken2Wav(model, max_rows=2)
    streams = [model.new_stream("cached", embedding=p.embedding()) for p in plans]
    sizes: list[int] = []
    solve = model.flow.decoder.solve

    def spy(z, *args, **kwargs):
        sizes.append(z.shape[0])
        return solve(z, *args, **kwargs)

    monkeypatch.setattr(model.flow.decoder, "solve", spy)
    outs: list[list[np.ndarray]] = [[], [], []]
    for k in range(2):
        res = batched.advance([StreamWork(s, p.groups()[k], finalize=k == 1) for s, p in zip(streams, plans)])
        for o, r in zip(outs, res):
            assert isinstance(r, np.ndarray)
            o.append(r)
    assert max(sizes) == 2 and 1 in sizes
    monkeypatch.undo()
    for o, plan in zip(outs, plans):
        want, _ = _alone(model, plan)
        assert_close(np.concatenate(o), torch.from_numpy(np.concatenate(want)), SPEECH_ATOL, "split round")
