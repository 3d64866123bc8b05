"""Static-shape flow chunks of several cached streams, ready for CUDA graphs or ``torch.compile``.

``StaticFlowSolver`` runs one flow chunk (the whole Euler solve: n_timesteps DiT calls on CFG
row pairs) for several streams with tensor work of one fixed shape per
(batch bucket, chunk frames, span bucket) key, as ``utils/funaudiochat/static_decode.py`` does
for the LM step:

* each stream holds a slot for its life; slot s owns CFG rows 2s, 2s+1 of every store. A solve
  gathers its slots by an index tensor and is padded up to a bucket with a scratch slot whose
  results nobody reads;
* the key/value stores of every (ODE step, layer) are preallocated to ``max_frames`` per row,
  written at each row's start and read over a span bucket with a mask (the row's own chunk and
  the earlier ones ``num_decoding_left_chunks`` lets it see), so no shape follows a row's length;
* the positional convs' tails live in per-slot stores too, and the inputs (noise, condition,
  speaker, slot rows, starts) and the mel out live in buffers as long-lived as the solver, so a
  captured graph needs only a copy-in before its replay and a copy-out after it.

Memory: depth x n_timesteps x 2 (K, V) x 2 (CFG) x max_frames x dim values per slot, what the
eager caches hold at that length (fp16 release model: about 0.9 GB a slot per 10 s); the stores
double when a stream outgrows them, which drops the captured graphs. A left-chunk limit masks old
frames but does not shrink the stores.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from utils.funaudiochat.static_decode import BatchBuckets, StepRunner, span_for

from .dit import DiTCache
from .flow import CausalFlow

logger = logging.getLogger(__name__)

_TAIL = 30  # frames of history each causal positional conv keeps (kernel 31, dit.py)


@dataclass(frozen=True)
class StaticVocoderConfig(BatchBuckets):
    """Shapes and execution of the static token2wav path (flow here, HiFT in static_hift.py)."""

    batch_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32)  # streams per flow solve / HiFT step
    max_streams: int = 32  # slots: streams holding static state at once
    max_frames: int = 500  # mel frames of key/value store per slot (10 s); doubles on need
    min_span: int = 100  # attention spans are min_span * 2**k frames, capped at max_frames
    cuda_graphs: bool = False  # capture and replay per key; ignored (eager) off CUDA
    compile: bool = False  # torch.compile each piece (per key) before running or capturing it
    compile_backend: str = "inductor"
    warmup: int = 2  # eager runs of a piece before its capture

    def __post_init__(self) -> None:
        self.check_buckets()
        if not 1 <= self.min_span <= self.max_frames:
            raise ValueError("1 <= min_span <= max_frames is required")
        if self.max_streams < 1 or self.warmup < 1:
            raise ValueError("max_streams and warmup must be >= 1")


class FlowSlots:
    """Per-slot flow state: key/value stores, positional-conv tails and frame counts.

    ``kv`` is [steps, depth, 2 (K/V), 2S, max_frames, H, d]: time-major rows, so a chunk's keys
    go in with one ``index_copy_`` on the flat [2S max_frames, H, d] view. Slot S-1 is the
    scratch slot of padding rows.
    """

    def __init__(self, flow: CausalFlow, *, slots: int, max_frames: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        cfg = flow.cfg.dit
        self.depth, self.slots, self.max_frames = cfg.depth, slots, max_frames
        steps = flow.cfg.n_timesteps
        self.kv = torch.zeros(steps, cfg.depth, 2, 2 * slots, max_frames, cfg.heads, cfg.dim_head,
                              dtype=dtype, device=device)
        self.tails = torch.zeros(steps, 2, 2 * slots, _TAIL, cfg.dim, dtype=dtype, device=device)
        self.lengths = [0] * slots  # frames each slot has processed (host: starts are copied in)

    @property
    def scratch(self) -> int:
        return self.slots - 1

    def reset(self, slot: int) -> None:
        """A fresh stream: no frames, zero tails. Old keys stay; the mask hides them."""
        self.tails[:, :, 2 * slot:2 * slot + 2].zero_()
        self.lengths[slot] = 0

    def fit(self, frames: int) -> bool:
        """Grow the stores to hold ``frames`` per row; True when they were reallocated."""
        if frames <= self.max_frames:
            return False
        new_len = self.max_frames
        while new_len < frames:
            new_len *= 2
        logger.info("static flow stores grow from %d to %d frames", self.max_frames, new_len)
        old = self.kv
        self.kv = old.new_zeros(*old.shape[:4], new_len, *old.shape[5:])
        self.kv[:, :, :, :, :self.max_frames] = old
        self.max_frames = new_len
        return True


class _Pass:
    """What every layer of one solve shares: store rows, write index, RoPE angles, key mask."""

    def __init__(self, slots: FlowSlots, rows: torch.Tensor, starts: torch.Tensor, frames: int,
                 span: int, flow: CausalFlow) -> None:
        cfg = flow.cfg.dit
        self.rows, self.span = rows, span  # [2b] store rows; python int
        offsets = starts[:, None] + torch.arange(frames, device=rows.device)  # [2b, T]
        self.write = (rows[:, None] * slots.max_frames + offsets).flatten()  # [2b T] flat positions
        self.angles = flow.decoder.estimator.rotary_embed.angles_at(starts, frames)  # [2b, T, d]
        pos = torch.arange(span, device=rows.device)[None]  # [1, span]
        visible = pos < (starts + frames)[:, None]  # [2b, span]: own chunk and earlier ones
        left = cfg.num_decoding_left_chunks
        if left >= 0:
            size = cfg.static_chunk_size
            visible &= pos >= ((starts // size - left).clamp(min=0) * size)[:, None]
        self.mask = visible[:, None, None, :]  # [2b, 1, 1, span]


class _SlotKV:
    """One (ODE step, layer) store seen by one solve: a block's ``AttentionStore``."""

    def __init__(self, p: _Pass, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.p, self.keys, self.values = p, keys, values  # [2S, L, H, d] each

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               first_visible: int = 0) -> torch.Tensor:
        # first_visible (one int for all rows) is replaced by the pass's per-row mask
        p = self.p
        heads, dh = k.shape[1], k.shape[3]
        for store, new in ((self.keys, k), (self.values, v)):
            flat = store.view(-1, heads, dh)  # [2S L, H, d]
            flat.index_copy_(0, p.write, new.transpose(1, 2).reshape(-1, heads, dh))  # [2b T, H, d]
        keys = self.keys[:, :p.span].index_select(0, p.rows).transpose(1, 2)  # [2b, H, span, d]
        values = self.values[:, :p.span].index_select(0, p.rows).transpose(1, 2)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=p.mask)


class StaticFlowSolver:
    """One flow chunk for several slots' streams per call, static per (bucket, frames, span).

    Owned by one thread (the vocoder worker's); ``runner`` may be shared with the HiFT step.
    """

    def __init__(self, flow: CausalFlow, config: StaticVocoderConfig, runner: StepRunner) -> None:
        self.flow, self.config, self.runner = flow, config, runner
        dtype = next(flow.decoder.estimator.parameters()).dtype
        dev = flow.input_embedding.weight.device
        rows, frames, n_mel = config.max_batch, flow.cfg.dit.static_chunk_size, flow.cfg.output_size
        self.slots = FlowSlots(flow, slots=config.max_streams + 1, max_frames=config.max_frames,
                               device=dev, dtype=dtype)
        self.z = torch.zeros(rows, n_mel, frames, device=dev)  # [R, 80, C] ODE start (fp32)
        self.mu = torch.zeros(rows, n_mel, frames, device=dev)  # [R, 80, C] condition
        self.spks = torch.zeros(rows, n_mel, device=dev)  # [R, 80]
        self.rows = torch.zeros(2 * rows, dtype=torch.long, device=dev)  # [2R] store rows
        self.starts = torch.zeros(2 * rows, dtype=torch.long, device=dev)  # [2R] first frame
        self.mel = torch.zeros(rows, n_mel, frames, device=dev)  # [R, 80, C] out (fp32)
        self.t_span = flow.decoder.t_span().to(dev)  # on the device: a capture cannot copy it

    def solve(self, slots: Sequence[int], z: Sequence[torch.Tensor], mu: Sequence[torch.Tensor],
              spks: Sequence[torch.Tensor]) -> torch.Tensor:
        """Mels [n, 80, T] for one chunk of T frames per slot (z, mu [1, 80, T], spks [1, 80])."""
        n, frames = len(slots), mu[0].shape[2]
        assert n and all(m.shape[2] == frames for m in mu), [m.shape for m in mu]
        assert frames <= self.z.shape[2], (frames, self.z.shape)
        b = self.config.bucket(n)
        store = self.slots
        needed = max(store.lengths[s] for s in slots) + frames
        if store.fit(needed):
            self.runner.reset()  # the graphs hold the old stores
        span = span_for(needed, min(self.config.min_span, store.max_frames), store.max_frames)
        self._copy_in(slots, z, mu, spks, b, frames)
        self.runner.run(("flow", b, frames, span), lambda: self._piece(b, frames, span), [store.tails])
        for s in slots:
            store.lengths[s] += frames
        return self.mel[:n, :, :frames].clone()  # clone: the next solve overwrites the buffer

    def _copy_in(self, slots: Sequence[int], z: Sequence[torch.Tensor], mu: Sequence[torch.Tensor],
                 spks: Sequence[torch.Tensor], b: int, frames: int) -> None:
        n, store = len(slots), self.slots
        self.z[:n, :, :frames].copy_(torch.cat(list(z)))
        self.mu[:n, :, :frames].copy_(torch.cat(list(mu)))
        self.spks[:n].copy_(torch.cat(list(spks)))
        padded = [*slots, *[store.scratch] * (b - n)]
        rows = [r for s in padded for r in (2 * s, 2 * s + 1)]
        starts = [store.lengths[s] for s in padded for _ in range(2)]  # the scratch slot stays at 0
        self.rows[:2 * b].copy_(torch.tensor(rows))
        self.starts[:2 * b].copy_(torch.tensor(starts))

    def _piece(self, b: int, frames: int, span: int) -> None:
        """The whole Euler solve over the buffers' first b rows (static shapes: see the key)."""
        store, flow = self.slots, self.flow
        estimator = flow.decoder.estimator
        p = _Pass(store, self.rows[:2 * b], self.starts[:2 * b], frames, span, flow)

        def velocity(x: torch.Tensor, m: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                     c: torch.Tensor, step: int) -> torch.Tensor:
            tails = DiTCache(layers=[], pos_tails=[store.tails[step, i].index_select(0, p.rows)
                                                   for i in range(2)])  # 2 x [2b, 30, D]
            kv = [_SlotKV(p, store.kv[step, layer, 0], store.kv[step, layer, 1])
                  for layer in range(store.depth)]
            # every row has the same time: the time path runs on one CFG pair, as alone
            out = estimator.run_layers(x, m, t[:2], s, c, p.angles, None, tails, kv)
            for i, tail in enumerate(tails.pos_tails):
                assert tail is not None
                store.tails[step, i].index_copy_(0, p.rows, tail)
            return out

        mu = self.mu[:b, :, :frames]
        mel = flow.decoder.solve(self.z[:b, :, :frames], mu, self.spks[:b], torch.zeros_like(mu),
                                 velocity, t_span=self.t_span)
        self.mel[:b, :, :frames].copy_(mel)
