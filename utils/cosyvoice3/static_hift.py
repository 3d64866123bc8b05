"""Static-shape steady HiFT steps of several streams, ready for CUDA graphs or ``torch.compile``.

A cached stream's HiFT step already has fixed shapes once it streams steadily: from its second
full chunk on (50 mel frames in, 24000 samples out) every conv buffer, pending frame count and
overlap-add tail keeps its length from step to step, i.e. ``_hift_signature`` (batched_stream.py)
is a fixed point of the step. Only a stream's first steps and its final step differ; those stay
eager (``BatchedToken2Wav``'s path).

So ``StaticHiftStep`` pads nothing in time. It keeps the steady state of each stream in a slot
(row ``slot`` of one long-lived store per state tensor); a step for b slots (padded to a bucket
with a scratch slot) gathers their rows, runs ``HiftGenerator.step_rows`` and scatters the new
state back: one fixed shape per (bucket,) key. The host-side counters the step branches on are
those of a template state (equal signatures branch alike); each stream's own counters advance by
what one step adds. hift.py reads each row's sine noise at its sample offset of a CPU buffer,
which a graph can neither copy from nor follow, so every row's slice is copied to a device buffer
before the step and the step reads row i's at offset i * samples.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from utils.funaudiochat.static_decode import StepRunner

from .batched_stream import _hift_signature
from .hift import HiftGenerator, HiftState
from .static_flow import StaticVocoderConfig

_TENSORS = ("phase", "stft_pending", "spec_pending", "mel_pending", "ola_tail")
_COUNTERS = ("source_samples", "spec_seen", "blocks_done", "ola_positions")


@dataclass
class _Store:
    """Steady states of every slot (row = slot) and the step's fixed inputs and outputs."""

    signature: Hashable  # of the held states: one fixed point, one chunk length
    buffers: dict[torch.nn.Module, torch.Tensor]  # conv -> [S, C, k]
    tensors: dict[str, torch.Tensor]  # _TENSORS name -> [S, ...]
    template: dict[str, int]  # _COUNTERS of the first held state
    mel: torch.Tensor  # [R, 80, frames] in
    noise: torch.Tensor  # [1, R samples, harmonics] each row's sine noise
    audio: torch.Tensor  # [R, samples] out
    deltas: dict[str, int]  # what one step adds to each counter (set by the first step)

    @property
    def samples(self) -> int:
        return self.audio.shape[1]


class StaticHiftStep:
    """Steady HiFT steps of several slots at once; owned by the vocoder worker's thread.

    While a slot is held, its state tensors live here (the stream's ``HiftState`` keeps only
    its counters current); ``release`` gives them back before any eager step.
    """

    def __init__(self, hift: HiftGenerator, config: StaticVocoderConfig, runner: StepRunner) -> None:
        self.hift, self.config, self.runner = hift, config, runner
        self.scratch = config.max_streams  # the padding rows' slot
        self.held: set[int] = set()
        self._store: _Store | None = None
        self._rows = torch.zeros(config.max_batch, dtype=torch.long, device=hift.window.device)
        # shares every module and parameter; only its sine_noise differs. That holds while
        # sine_noise is a plain attribute: a registered buffer would be set in the shared dict
        assert "sine_noise" not in hift._buffers, "static_hift expects a plain sine_noise attribute"
        self._view = copy.copy(hift)

    def accepts(self, slot: int, state: HiftState, mel: torch.Tensor) -> bool:
        """Whether the next non-final step of ``slot`` can run here."""
        store = self._store
        if slot not in self.held or store is None or mel.shape[2] != store.mel.shape[2]:
            return False
        return state.source_samples + store.samples <= self.hift.sine_noise.shape[1]  # else: eager error

    def maybe_hold(self, slot: int, state: HiftState, before: Hashable, mel: torch.Tensor) -> None:
        """After an eager step with signature ``before``: hold the state if it is steady."""
        after = _hift_signature(state, mel, False, self.hift.cfg)
        if before != after:
            return
        if self._store is None:
            self._store = self._new_store(state, after, mel.shape[2])
            self._put(self.scratch, state)  # padding rows step a real state: no 0/0 in them
        if self._store.signature != after:
            return  # another chunk length's fixed point: stays eager
        self._put(slot, state)
        self.held.add(slot)

    def _put(self, slot: int, state: HiftState) -> None:
        assert self._store is not None
        for conv, buf in state.buffers.items():
            self._store.buffers[conv][slot] = buf[0]
        for name in _TENSORS:
            self._store.tensors[name][slot] = getattr(state, name)[0]

    def release(self, slot: int, state: HiftState | None) -> None:
        """Free the slot, giving its state tensors back to ``state`` (None: the stream is gone)."""
        if slot not in self.held:
            return
        self.held.discard(slot)
        if state is None:
            return
        assert self._store is not None
        state.buffers = {conv: buf[slot:slot + 1].clone() for conv, buf in self._store.buffers.items()}
        for name, t in self._store.tensors.items():
            setattr(state, name, t[slot:slot + 1].clone())

    def step(self, slots: Sequence[int], states: Sequence[HiftState],
             mels: Sequence[torch.Tensor]) -> torch.Tensor:
        """Audio [n, samples] of one steady step of each slot; advances the states' counters."""
        store = self._store
        assert store is not None and all(s in self.held for s in slots), slots
        n, b, samples = len(slots), self.config.bucket(len(slots)), store.samples
        store.mel[:n].copy_(torch.cat(list(mels)))
        for i, st in enumerate(states):
            store.noise[:, i * samples:(i + 1) * samples].copy_(
                self.hift.sine_noise[:, st.source_samples:st.source_samples + samples])
        self._rows[:b].copy_(torch.tensor([*slots, *[self.scratch] * (b - n)]))
        state_tensors = [*store.buffers.values(), *store.tensors.values()]
        self.runner.run(("hift", b), lambda: self._piece(store, b), state_tensors)
        for st in states:
            for name, delta in store.deltas.items():
                setattr(st, name, getattr(st, name) + delta)
        return store.audio[:n].clone()  # clone: the next step overwrites the buffer

    def _piece(self, store: _Store, b: int) -> None:
        rows = self._rows[:b]
        state = HiftState(buffers={c: t.index_select(0, rows) for c, t in store.buffers.items()},
                          row_source_samples=[i * store.samples for i in range(b)])
        for name, t in store.tensors.items():
            setattr(state, name, t.index_select(0, rows))
        for name, value in store.template.items():
            setattr(state, name, value)
        store.audio[:b].copy_(self._view.step_rows(store.mel[:b], state, finalize=False))
        for conv, t in store.buffers.items():
            t.index_copy_(0, rows, state.buffers[conv])
        for name, t in store.tensors.items():
            t.index_copy_(0, rows, getattr(state, name))
        store.deltas = {name: getattr(state, name) - value for name, value in store.template.items()}

    def _new_store(self, state: HiftState, signature: Hashable, frames: int) -> _Store:
        def per_slot(t: torch.Tensor | None) -> torch.Tensor:
            assert t is not None, "a steady state has every tensor"
            return t.new_zeros(self.scratch + 1, *t.shape[1:])

        dev, rows = self.hift.window.device, self.config.max_batch
        samples = frames * self.hift.cfg.samples_per_frame
        sine = self.hift.sine_noise
        store = _Store(signature=signature,
                       buffers={conv: per_slot(buf) for conv, buf in state.buffers.items()},
                       tensors={name: per_slot(getattr(state, name)) for name in _TENSORS},
                       template={name: getattr(state, name) for name in _COUNTERS},
                       mel=torch.zeros(rows, self.hift.cfg.in_channels, frames, device=dev),
                       noise=torch.zeros(1, rows * samples, sine.shape[2], dtype=sine.dtype, device=dev),
                       audio=torch.zeros(rows, samples, device=dev), deltas={})
        self._view.sine_noise = store.noise
        return store
