"""Static-shape token2wav: every stream's audio equals its alone output, through bucket padding,
store growth, streams joining and leaving at different times, and slot reuse."""

from __future__ import annotations

import gc
from collections.abc import Callable, Hashable, Sequence

import numpy as np
import pytest
import torch

from tests.cv3_golden import MODEL_DIR, SINE_SAMPLES, SPEECH_ATOL, assert_close
from tests.cv3_plans import Plan
from utils.cosyvoice3 import Token2Wav
from utils.cosyvoice3.batched_stream import StreamWork
from utils.cosyvoice3.static_flow import StaticVocoderConfig
from utils.cosyvoice3.static_token2wav import StaticToken2Wav
from utils.cosyvoice3.streaming import Token2WavStream

# 100 frames of store (2 s of mel at 50 Hz): longer replies make it grow
CONFIG = StaticVocoderConfig(batch_buckets=(1, 2, 4, 8), max_streams=6, max_frames=100, min_span=50)


class WarmupRunner:
    """`CudaGraphRunner`'s contract on the CPU: the first run of a key is `warmup` runs with
    `state` put back after each, then the real one. The audio stays right only if every piece
    names all the state it advances and computes the same thing again from its buffers."""

    def __init__(self, warmup: int = 2) -> None:
        self.warmup = warmup
        self.keys: list[Hashable] = []
        self.resets = 0
        self._seen: set[Hashable] = set()

    def run(self, key: Hashable, piece: Callable[[], None], state: Sequence[torch.Tensor]) -> None:
        self.keys.append(key)
        if key not in self._seen:
            self._seen.add(key)
            saved = [t.clone() for t in state]
            for _ in range(self.warmup):
                piece()
                for t, s in zip(state, saved, strict=True):
                    t.copy_(s)
        piece()

    def reset(self) -> None:
        self._seen.clear()
        self.resets += 1


def _alone(model: Token2Wav, plan: Plan) -> list[np.ndarray]:
    """Per round output of the stream run alone (the last round includes finalize)."""
    stream = model.new_stream("cached", embedding=plan.embedding())
    out = [stream.push(g) for g in plan.groups()]
    out[-1] = np.concatenate([out[-1], stream.finalize()])
    return out


def _drive(vocoder: StaticToken2Wav, model: Token2Wav,
           plans: list[Plan]) -> tuple[list[Token2WavStream], list[list[np.ndarray]]]:
    """Run the plans' rounds through `vocoder`; a cancelled stream is dropped after its round."""
    streams = [model.new_stream("cached", embedding=p.embedding()) for p in plans]
    groups = [p.groups() for p in plans]
    outs: list[list[np.ndarray]] = [[] for _ in plans]
    for rnd in range(max(p.start + len(g) for p, g in zip(plans, groups))):
        work, who = [], []
        for i, (plan, stream) in enumerate(zip(plans, streams)):
            k = rnd - plan.start
            if 0 <= k < len(groups[i]) and (plan.cancel_at is None or rnd <= plan.cancel_at):
                work.append(StreamWork(stream, groups[i][k], finalize=k == len(groups[i]) - 1))
                who.append(i)
        for i, pcm in zip(who, vocoder.advance(work), strict=True):
            assert isinstance(pcm, np.ndarray), pcm
            outs[i].append(pcm)
        for i, plan in enumerate(plans):
            if plan.cancel_at == rnd:
                vocoder.drop(streams[i])
    return streams, outs


def _assert_alone(model: Token2Wav, plans: list[Plan], outs: list[list[np.ndarray]]) -> None:
    for i, plan in enumerate(plans):
        want, got = _alone(model, plan), outs[i]
        if plan.cancel_at is not None:
            want = want[:len(got)]
        assert [len(c) for c in got] == [len(c) for c in want], f"stream {i} chunking"
        assert_close(np.concatenate(got), torch.from_numpy(np.concatenate(want)), SPEECH_ATOL,
                     f"stream {i} speech")


PLANS = [
    Plan(n_tokens=130, start=0, push=25, seed=1),  # chunk-aligned; outgrows the 100-frame store
    Plan(n_tokens=101, start=1, push=25, seed=2),  # one chunk behind: other starts in one solve
    Plan(n_tokens=77, start=0, push=7, seed=3),  # short last chunk
    Plan(n_tokens=140, start=3, push=25, seed=4, cancel_at=4),  # dropped mid-way
    Plan(n_tokens=64, start=2, push=64, seed=5),  # everything at once: several chunks per round
    Plan(n_tokens=10, start=5, push=3, seed=6),  # shorter than one chunk
]


def test_each_stream_equals_its_alone_output(model: Token2Wav, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = WarmupRunner()
    vocoder = StaticToken2Wav(model, config=CONFIG, runner=runner)
    solve_rows: list[int] = []
    solve = vocoder.flow_solver.solve

    def spy(slots: Sequence[int], *args: Sequence[torch.Tensor]) -> torch.Tensor:
        solve_rows.append(len(slots))
        return solve(slots, *args)

    monkeypatch.setattr(vocoder.flow_solver, "solve", spy)
    streams, outs = _drive(vocoder, model, PLANS)
    _assert_alone(model, PLANS, outs)
    keys = [k for k in runner.keys if isinstance(k, tuple)]
    flow_keys = {k for k in keys if k[0] == "flow"}  # ("flow", bucket, frames, span)
    hift_keys = {k for k in keys if k[0] == "hift"}  # ("hift", bucket)
    assert 3 in solve_rows and ("flow", 4, 50, 100) in flow_keys  # 3 streams padded to 4
    assert len({span for *_, span in flow_keys}) >= 3  # span buckets follow the longest row
    assert vocoder.flow_solver.slots.max_frames == 400 and runner.resets == 2  # grew 100 -> 200 -> 400
    assert any(b >= 2 for _, b in hift_keys)  # steady HiFT steps ran static, batched
    assert vocoder.streams == 0 and not vocoder.hift_step.held  # finished and dropped: all freed
    assert all(s.finalized for s, p in zip(streams, PLANS) if p.cancel_at is None)


def test_slots_are_reused_and_refused(model: Token2Wav) -> None:
    """One slot: a collected stream frees it, the next stream starts clean in it; while it is
    taken another stream fails alone, and so does a stream that already ran outside."""
    vocoder = StaticToken2Wav(model, config=StaticVocoderConfig(batch_buckets=(1,), max_streams=1,
                                                                max_frames=200, min_span=50))
    first, second = Plan(n_tokens=60, start=0, push=30, seed=11), Plan(n_tokens=80, start=0, push=40, seed=12)
    gone = model.new_stream("cached", embedding=first.embedding())
    pcm = vocoder.advance([StreamWork(gone, first.groups()[0])])[0]
    assert isinstance(pcm, np.ndarray) and pcm.size and vocoder.streams == 1
    del gone, pcm
    gc.collect()
    assert vocoder.streams == 0  # its collection freed the slot
    stream = model.new_stream("cached", embedding=second.embedding())
    waiting = model.new_stream("cached", embedding=first.embedding())
    outside = model.new_stream("cached", embedding=first.embedding())
    outside.push(first.groups()[0])
    out = vocoder.advance([StreamWork(stream, second.groups()[0]), StreamWork(waiting, first.groups()[0]),
                           StreamWork(outside, first.groups()[1])])
    assert isinstance(out[1], RuntimeError) and isinstance(out[2], ValueError)
    last = vocoder.advance([StreamWork(stream, second.groups()[1], finalize=True)])
    _assert_alone(model, [second], [[out[0], last[0]]])  # type: ignore[list-item]
    assert vocoder.streams == 0
    held = model.new_stream("cached", embedding=first.embedding())
    vocoder.advance([StreamWork(held, first.groups()[0])])
    with pytest.raises(IndexError):
        held.push(first.groups()[1])  # its flow caches live in the slot: it cannot run alone


def test_left_chunk_limit_per_row() -> None:
    """With one left chunk, each row's mask hides the frames before its own window."""
    limited = Token2Wav.from_model_dir(MODEL_DIR, sine_samples=SINE_SAMPLES, left_chunks=1)
    plans = [Plan(n_tokens=120, start=0, push=25, seed=7), Plan(n_tokens=90, start=2, push=25, seed=8)]
    vocoder = StaticToken2Wav(limited, config=CONFIG)
    _, outs = _drive(vocoder, limited, plans)
    _assert_alone(limited, plans, outs)


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="increasing"):
        StaticVocoderConfig(batch_buckets=(4, 2))
    with pytest.raises(ValueError, match="min_span"):
        StaticVocoderConfig(max_frames=50, min_span=100)
    with pytest.raises(ValueError, match="exceed"):
        CONFIG.bucket(9)
    assert CONFIG.bucket(3) == 4
