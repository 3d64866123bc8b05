"""Batched token2wav: advance several cached streams (`CachedStream`) in shared model calls.

One `BatchedToken2Wav` per `Token2Wav` (the vocoder worker owns it). Each `advance` call
takes, for some streams, their next tokens and whether they end; it returns for each
exactly what `stream.push(tokens)` (then `stream.finalize()`) would have returned alone,
but runs every stream with a chunk ready through one flow-matching solve and one HiFT
step per round. Streams join and leave between calls; a cancelled stream is simply not
passed again (drop it). All state stays in the streams, so a stream may be advanced
alone and batched in turn.

How rows that are at different points of their streams share a call:
- flow: the rows of one solve have the same chunk length (a short last chunk runs with
  the other short ones); each row brings its own noise slice, speaker, RoPE positions,
  positional-conv tails and key/value caches; only attention runs per group of streams
  with equally long caches (no padding). CFG is two rows per stream (conditional,
  unconditional); the time embedding runs once, on one pair, as for a stream alone.
- HiFT: states are stacked only when every shape-deciding quantity matches (buffer
  lengths, pending frames, the first/final step...); in steady streaming every stream
  past its first chunk matches. Each row keeps its own sine-noise offset and phase.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F

from .config import HiftConfig
from .dit import DiT, DiTCache, KVCache, append_stacked
from .flow import CausalFlow
from .hift import HiftState
from .streaming import CachedStream, Token2Wav, Token2WavStream

DEFAULT_MAX_ROWS = 32  # streams per model call; bounds its activation memory


@dataclass(frozen=True)
class StreamWork:
    """One stream's part of an `advance` call: tokens to push, then maybe the end."""

    stream: Token2WavStream  # a CachedStream; any other kind fails its entry
    tokens: Sequence[int] = ()
    finalize: bool = False


@dataclass
class _Job:
    """A stream while one `advance` call runs."""

    work: StreamWork
    pcm: list[np.ndarray] = field(default_factory=list)
    tail_mels: list[torch.Tensor] = field(default_factory=list)  # finalizing: mels for the last step
    error: Exception | None = None

    @property
    def stream(self) -> CachedStream:
        return cast(CachedStream, self.work.stream)  # checked by _accept before any use

    def next_chunk(self) -> tuple[int, bool] | None:
        """(end token, vocode at once) of the stream's next flow chunk now, or None.

        As in CachedStream: a full chunk with its lookahead is vocoded at once (push);
        at the end, the remaining chunks' mels wait for one final vocoder step (finalize).
        """
        s = self.stream
        look = s.model.flow.cfg.pre_lookahead_len
        total = s.tokens.shape[1]
        if total >= s.done + s.chunk + look:
            return s.done + s.chunk, True
        if self.work.finalize and s.done < total:
            return min(s.done + s.chunk, total), False
        return None


class BatchedToken2Wav:
    """Steps many `CachedStream`s of one `Token2Wav` together; owned by the vocoder worker."""

    def __init__(self, model: Token2Wav, *, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        self.model = model
        self.max_rows = max_rows

    @torch.inference_mode()
    def advance(self, work: Sequence[StreamWork]) -> list[np.ndarray | Exception]:
        """Push each stream's tokens (and finalize it if asked), batched across streams.

        One entry per item, in order: float32 [n] PCM at 24 kHz, equal (within float
        rounding) to the alone result, or the exception that failed only that stream.
        """
        if len({id(w.stream) for w in work}) != len(work):
            raise ValueError("a stream may appear only once per advance() call")
        jobs = [_Job(w) for w in work]
        for job in jobs:
            job.error = _accept(job.work)
        live = [j for j in jobs if j.error is None]
        while True:
            ready = [(j, *nxt) for j in live if j.error is None and (nxt := j.next_chunk()) is not None]
            if not ready:
                break
            self._flow_round(ready)
        self._finish([j for j in live if j.error is None and j.work.finalize])
        out: list[np.ndarray | Exception] = []
        for job in jobs:
            if job.error is not None:
                out.append(job.error)
                continue
            pcm = np.concatenate(job.pcm).astype(np.float32) if job.pcm else np.zeros(0, np.float32)
            job.stream.samples_emitted += pcm.shape[0]
            out.append(pcm)
        return out

    # ---- flow -----------------------------------------------------------------------

    def _flow_round(self, ready: list[tuple[_Job, int, bool]]) -> None:
        """One flow chunk for each ready job, then one HiFT step for the chunks vocoded at once."""
        by_len: dict[int, list[tuple[_Job, int, bool]]] = defaultdict(list)
        for job, end, now in ready:
            by_len[end - job.stream.done].append((job, end, now))
        vocode: list[tuple[_Job, torch.Tensor]] = []
        for group in by_len.values():
            for i in range(0, len(group), self.max_rows):
                rows = group[i:i + self.max_rows]
                mels = self._flow_chunks([(job, end) for job, end, _ in rows])
                for (job, _, now), mel in zip(rows, mels, strict=True):
                    if mel is None:
                        continue  # this stream failed; its error is recorded
                    if now:
                        vocode.append((job, mel))
                    else:
                        job.tail_mels.append(mel)
        self._vocode(vocode, finalize=False)

    def _flow_chunks(self, rows: list[tuple[_Job, int]]) -> list[torch.Tensor | None]:
        """Mels [1, 80, 2n] of chunks with the same length n, one solve for all rows."""
        flow = self.model.flow
        mus, zs, ok = [], [], []
        for job, end in rows:
            if (inputs := _chunk_inputs(flow, job, end)) is not None:
                zs.append(inputs[0])
                mus.append(inputs[1])
                ok.append((job, end))
        if not ok:
            return [None] * len(rows)
        if len(ok) == 1:  # a lone row takes the stream's own path: same cost, same numbers
            job, end = ok[0]
            mel = job.stream._next_mel(end)
            return [mel if j is job else None for j, _ in rows]
        streams = [job.stream for job, _ in ok]
        mu = torch.cat(mus)  # [B, 80, T]
        spks = torch.cat([s.spks for s in streams])  # [B, 80]
        estimator = flow.decoder.estimator

        def velocity(x: torch.Tensor, m: torch.Tensor, t: torch.Tensor, sp: torch.Tensor,
                     c: torch.Tensor, step: int) -> torch.Tensor:
            return _estimate_rows(estimator, x, m, t, sp, c, [s.caches[step] for s in streams])

        mel = flow.decoder.solve(torch.cat(zs), mu, spks, torch.zeros_like(mu), velocity)
        for job, end in ok:
            job.stream.done = end
        mels = iter(mel.split(1))
        return [next(mels) if job.error is None else None for job, _ in rows]

    # ---- vocoder --------------------------------------------------------------------

    def _finish(self, jobs: list[_Job]) -> None:
        """The last HiFT step of each finalizing stream (CachedStream._finalize's)."""
        final: list[tuple[_Job, torch.Tensor]] = []
        for job in jobs:
            s = job.stream
            if not job.tail_mels and s.vocoder.blocks_done == 0 and s.vocoder.mel_pending is None:
                continue  # nothing was ever pushed
            mel = (torch.cat(job.tail_mels, dim=2) if job.tail_mels
                   else s.spks.new_zeros(1, self.model.flow.cfg.output_size, 0))
            final.append((job, mel))
        self._vocode(final, finalize=True)

    def _vocode(self, items: list[tuple[_Job, torch.Tensor]], *, finalize: bool) -> None:
        hift = self.model.hift
        groups: dict[Hashable, list[tuple[_Job, torch.Tensor]]] = defaultdict(list)
        for job, mel in items:
            groups[_hift_signature(job.stream.vocoder, mel, finalize, hift.cfg)].append((job, mel))
        for group in groups.values():
            for i in range(0, len(group), self.max_rows):
                rows = group[i:i + self.max_rows]
                states = [job.stream.vocoder for job, _ in rows]
                mel = torch.cat([m for _, m in rows])  # [B, 80, n]
                if len(rows) == 1:
                    audio = hift.step(mel, states[0], finalize=finalize).unsqueeze(0)
                else:
                    stacked = _stack_states(states)
                    before = _counters(stacked)
                    audio = hift.step_rows(mel, stacked, finalize=finalize)
                    _unstack_states(stacked, before, states)
                for (job, _), row in zip(rows, audio.cpu().numpy(), strict=True):
                    job.pcm.append(row)


# ---- helpers ------------------------------------------------------------------------

def _chunk_inputs(flow: CausalFlow, job: _Job, end: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The noise and condition of the stream's chunk up to token `end`, or None when the chunk
    is longer than the noise buffer: then only this stream fails (its job holds the error)."""
    s = job.stream
    ratio = flow.cfg.token_mel_ratio
    try:
        z = flow.decoder.noise(ratio * s.done, ratio * (end - s.done))
    except ValueError as exc:
        job.error = exc
        return None
    return z, flow.chunk_condition(s.tokens, s.done, end)


def _accept(work: StreamWork) -> Exception | None:
    """Append the tokens as push() would; a finalized stream fails like push() does."""
    s = work.stream
    if not isinstance(s, CachedStream):
        return TypeError(f"batched token2wav serves cached streams, not {type(s).__name__}")
    if s.finalized:
        return RuntimeError("push() after finalize()")
    new = [int(t) for t in work.tokens]
    if new:
        s.tokens = torch.cat([s.tokens, torch.tensor([new], dtype=torch.long, device=s.tokens.device)], dim=1)
    s.tokens_received += len(new)
    s.finalized = work.finalize
    return None


class _RowsKV(KVCache):
    """One layer's key/value stores of several streams behind the one-store interface.

    `attend` adds each stream's two (CFG) rows to its own cache, then attends the rows of
    streams holding the same number of frames together: unpadded and unmasked, so each row
    computes exactly what it computes alone. The caches of such a group live as rows of one
    shared store (`append_stacked`), so while the groups stay, nothing is concatenated.
    """

    def __init__(self, layers: list[KVCache], first_visible: list[int]) -> None:
        super().__init__()
        self.rows = layers
        self.first_visible = first_visible

    def append(self, k: torch.Tensor, v: torch.Tensor,
               first_visible: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError("rows of different lengths only attend (see attend)")

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               first_visible: int = 0) -> torch.Tensor:
        by_len: dict[int, list[int]] = defaultdict(list)  # equal lengths: equal first_visible
        for i, cache in enumerate(self.rows):
            by_len[cache.length].append(i)
        if len(by_len) == 1:
            keys, values = append_stacked(self.rows, k, v, self.first_visible[0])
            return F.scaled_dot_product_attention(q, keys, values)
        out = torch.empty_like(q)
        for streams in by_len.values():
            rows = torch.tensor([r for i in streams for r in (2 * i, 2 * i + 1)], device=q.device)
            keys, values = append_stacked([self.rows[i] for i in streams], k[rows], v[rows],
                                          self.first_visible[streams[0]])  # [2g, H, L, d]
            out[rows] = F.scaled_dot_product_attention(q[rows], keys, values)
        return out


def _estimate_rows(estimator: DiT, x: torch.Tensor, mu: torch.Tensor, t: torch.Tensor,
                   spks: torch.Tensor, cond: torch.Tensor, caches: list[DiTCache]) -> torch.Tensor:
    """DiT.forward_chunk for 2B rows, rows 2i and 2i+1 (CFG) continuing caches[i]."""
    t_len = x.shape[2]
    cfg = estimator.cfg
    starts = [c.length for c in caches]
    if len(set(starts)) == 1:
        angles = estimator.rotary_embed.angles(starts[0], t_len)  # [T, d]
    else:
        per_row = [estimator.rotary_embed.angles(s, t_len) for s in starts]
        angles = torch.stack(per_row).repeat_interleave(2, 0)  # [B, T, d] -> [2B, T, d]
    size, left = cfg.static_chunk_size, cfg.num_decoding_left_chunks
    first_visible = [max(s // size - left, 0) * size if left >= 0 else 0 for s in starts]
    kv_layers = [_RowsKV([c.layers[layer] for c in caches], first_visible) for layer in range(cfg.depth)]
    tails = DiTCache(layers=[], pos_tails=[_stack_tails([c.pos_tails[i] for c in caches]) for i in range(2)])
    # every row has the same time: run its path on one CFG pair, as a lone stream does
    assert bool((t == t[0]).all()), t
    out = estimator.run_layers(x, mu, t[:2], spks, cond, angles, None, tails, kv_layers)
    for i, c in enumerate(caches):
        for j in range(2):
            tail = tails.pos_tails[j]
            assert tail is not None
            c.pos_tails[j] = tail[2 * i:2 * i + 2]
        c.length += t_len
    return out


def _stack_tails(tails: list[torch.Tensor | None]) -> torch.Tensor | None:
    """Per-stream positional-conv tails [2, 30, D] -> [2B, 30, D] (zeros where none yet)."""
    if all(t is None for t in tails):
        return None
    like = next(t for t in tails if t is not None)
    return torch.cat([torch.zeros_like(like) if t is None else t for t in tails])


def _length(t: torch.Tensor | None) -> int:
    return -1 if t is None else t.shape[-1]


def _hift_signature(state: HiftState, mel: torch.Tensor, finalize: bool, cfg: HiftConfig) -> Hashable:
    """Everything that decides the shapes and branches of a HiFT step: equal signatures
    mean the step does the same thing to every row of the stacked states."""
    n_fft = cfg.n_fft
    frames_per_block = cfg.samples_per_frame // cfg.hop_len
    assert not state.finished, "this vocoder stream was already finalized"
    return (mel.shape[2], finalize, state.phase is None, _length(state.stft_pending),
            _length(state.spec_pending), _length(state.mel_pending), state.blocks_done == 0,
            state.spec_seen - frames_per_block * state.blocks_done, _length(state.ola_tail),
            min(state.ola_positions, n_fft // 2),
            tuple((id(conv), buf.shape[-1]) for conv, buf in state.buffers.items()))


def _cat_rows(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    if parts[0] is None:
        return None
    return torch.cat([p for p in parts if p is not None])


def _stack_states(states: list[HiftState]) -> HiftState:
    """Stack states with equal signatures into one state with a row per stream."""
    first = states[0]
    return HiftState(
        buffers={conv: torch.cat([s.buffers[conv] for s in states]) for conv in first.buffers},
        phase=_cat_rows([s.phase for s in states]),
        source_samples=first.source_samples,
        row_source_samples=[s.source_samples for s in states],
        stft_pending=_cat_rows([s.stft_pending for s in states]),
        spec_pending=_cat_rows([s.spec_pending for s in states]),
        spec_seen=first.spec_seen,
        mel_pending=_cat_rows([s.mel_pending for s in states]),
        blocks_done=first.blocks_done,
        ola_tail=_cat_rows([s.ola_tail for s in states]),
        ola_positions=first.ola_positions)


_COUNTERS = ("source_samples", "spec_seen", "blocks_done", "ola_positions")


def _counters(state: HiftState) -> tuple[int, ...]:
    return tuple(getattr(state, name) for name in _COUNTERS)


def _unstack_states(stacked: HiftState, before: tuple[int, ...], states: list[HiftState]) -> None:
    """Give each stream its row back; counters advance by what the step added."""
    for i, s in enumerate(states):
        s.buffers = {conv: buf[i:i + 1] for conv, buf in stacked.buffers.items()}
        for name in ("phase", "stft_pending", "spec_pending", "mel_pending", "ola_tail"):
            rows = getattr(stacked, name)
            setattr(s, name, None if rows is None else rows[i:i + 1])
        for name, old in zip(_COUNTERS, before, strict=True):
            setattr(s, name, getattr(s, name) + getattr(stacked, name) - old)
        s.finished = stacked.finished
