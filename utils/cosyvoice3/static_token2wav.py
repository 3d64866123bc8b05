"""``StaticToken2Wav``: ``BatchedToken2Wav`` with static-shape flow solves and HiFT steps.

Same ``advance`` contract and results (within float rounding) as ``BatchedToken2Wav``; every
flow chunk runs through ``StaticFlowSolver`` (static_flow.py) and the steady HiFT steps through
``StaticHiftStep`` (static_hift.py): eagerly on the CPU, or as CUDA graphs replayed per shape
key on a GPU. A stream's first and final HiFT steps stay eager.

Each stream takes a slot at its first flow chunk here and keeps it until it is finalized,
``drop``-ped, or garbage collected (a cancelled stream may simply be dropped, as with
``BatchedToken2Wav``). Its flow caches live in the slot for all that time and its HiFT state
while it streams steadily, so a stream served here must be served only here: it must join
before its first chunk, and its own ``caches`` are emptied, so a direct ``push`` fails loudly.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import numpy as np
import torch

from utils.funaudiochat.static_decode import StepRunner, make_runner

from .batched_stream import BatchedToken2Wav, StreamWork, _chunk_inputs, _hift_signature, _Job
from .static_flow import StaticFlowSolver, StaticVocoderConfig
from .static_hift import StaticHiftStep
from .streaming import Token2Wav, Token2WavStream


class StaticToken2Wav(BatchedToken2Wav):
    """Steps many ``CachedStream``s with static shapes; owned by the vocoder worker's thread.

    ``runner`` overrides the one ``config`` asks for (tests pass fakes).
    """

    def __init__(self, model: Token2Wav, *, config: StaticVocoderConfig | None = None,
                 runner: StepRunner | None = None) -> None:
        self.config = config or StaticVocoderConfig()
        super().__init__(model, max_rows=self.config.max_batch)
        self.runner = runner or make_runner(self.config, model.device)
        self.flow_solver = StaticFlowSolver(model.flow, self.config, self.runner)
        self.hift_step = StaticHiftStep(model.hift, self.config, self.runner)
        self._slots: dict[int, int] = {}  # id(stream) -> slot
        self._finalizers: dict[int, weakref.finalize] = {}
        self._free = list(reversed(range(self.config.max_streams)))

    @property
    def streams(self) -> int:
        """Streams holding a slot."""
        return len(self._slots)

    def advance(self, work: Sequence[StreamWork]) -> list[np.ndarray | Exception]:
        out = super().advance(work)
        for w in work:
            if w.stream.finalized:
                self.drop(w.stream)
        return out

    def drop(self, stream: Token2WavStream) -> None:
        """Free a stream's slot, if it holds one (collecting the stream frees it too)."""
        finalizer = self._finalizers.get(id(stream))
        if finalizer is not None:
            finalizer()  # runs _release once and detaches

    def _release(self, key: int) -> None:
        slot = self._slots.pop(key)
        del self._finalizers[key]
        self.hift_step.release(slot, None)
        self._free.append(slot)

    def _slot(self, job: _Job) -> int | None:
        """The job's stream's slot, taken now if it has none (None: the job failed)."""
        s = job.stream
        key = id(s)
        if key in self._slots:
            return self._slots[key]
        if s.done:
            job.error = ValueError("a stream must join the static vocoder before its first chunk")
            return None
        if not self._free:
            job.error = RuntimeError(f"all {self.config.max_streams} static vocoder slots are taken")
            return None
        slot = self._free.pop()
        self.flow_solver.slots.reset(slot)
        s.caches = []  # the slot holds them now
        self._slots[key] = slot
        self._finalizers[key] = weakref.finalize(s, self._release, key)
        return slot

    # ---- flow -----------------------------------------------------------------------

    def _flow_chunks(self, rows: list[tuple[_Job, int]]) -> list[torch.Tensor | None]:
        """Mels [1, 80, 2n] of chunks with the same length n, one static solve for all rows."""
        flow = self.model.flow
        slots, zs, mus, ok = [], [], [], []
        for job, end in rows:
            slot = self._slot(job)
            if slot is not None and (inputs := _chunk_inputs(flow, job, end)) is not None:
                zs.append(inputs[0])
                mus.append(inputs[1])
                slots.append(slot)
                ok.append((job, end))
        if not ok:
            return [None] * len(rows)
        mel = self.flow_solver.solve(slots, zs, mus, [job.stream.spks for job, _ in ok])
        for job, end in ok:
            job.stream.done = end
        mels = iter(mel.split(1))
        return [next(mels) if job.error is None else None for job, _ in rows]

    # ---- vocoder --------------------------------------------------------------------

    def _vocode(self, items: list[tuple[_Job, torch.Tensor]], *, finalize: bool) -> None:
        """Steady steps of held slots run static; the rest eagerly, after which a state
        whose step left its signature unchanged is held for the next one."""
        step = self.hift_step
        static: list[tuple[_Job, torch.Tensor, int]] = []
        eager: list[tuple[_Job, torch.Tensor]] = []
        for job, mel in items:
            slot = self._slots[id(job.stream)]
            if not finalize and step.accepts(slot, job.stream.vocoder, mel):
                static.append((job, mel, slot))
            else:
                step.release(slot, job.stream.vocoder)  # its state goes back for the eager step
                eager.append((job, mel))
        if finalize:
            super()._vocode(eager, finalize=True)
        else:
            cfg = self.model.hift.cfg
            before = [_hift_signature(job.stream.vocoder, mel, False, cfg) for job, mel in eager]
            super()._vocode(eager, finalize=False)
            for (job, mel), sig in zip(eager, before, strict=True):
                step.maybe_hold(self._slots[id(job.stream)], job.stream.vocoder, sig, mel)
        for i in range(0, len(static), self.max_rows):
            part = static[i:i + self.max_rows]
            audio = step.step([slot for _, _, slot in part], [job.stream.vocoder for job, _, _ in part],
                              [mel for _, mel, _ in part])
            for (job, _, _), row in zip(part, audio.cpu().numpy(), strict=True):
                job.pcm.append(row)
