"""Static-shape decode steps, ready for CUDA graphs or ``torch.compile``.

``StaticDecodeBatch`` stands in for ``DecodeBatch`` (same rows, same order, same results) with
tensor work of one fixed shape per (batch bucket, attention span) key:

* rows are padded up to a bucket size; rows 0..n-1 are the sessions, the rest padding;
* KV caches are preallocated to a maximum length, written at a lengths tensor and read over a
  span bucket with a mask built from it, so no tensor shape follows a row's length;
* every step reads its inputs from, and writes its outputs to, buffers that live as long as the
  batch, so a captured graph only needs copy-in before a replay and copy-out after it.

One step is one LM piece and G CRQ pieces with eager token choice between them (per-row settings
and RNGs stay in Python, as in ``DecodeBatch``)::

    ids, speech groups -> [LM (b, span)] -> logits, upsampled rows [b, G, D]
    G x: row i, feedback token -> [CRQ (b, span')] -> logits -> choose -> next feedback token
    choose text

A ``StepRunner`` runs each piece: eagerly (CPU, and the default), or captured once per key as a
``torch.cuda.CUDAGraph`` and replayed (CUDA only), optionally ``torch.compile``'d first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from .decoding import StepResult, TurnRow, choose_text, speech_chooser
from .kv_cache import PrefixKVCache, gqa_attention
from .loading import FunAudioChatRuntime

logger = logging.getLogger(__name__)


class BatchBuckets:
    """A static config's batch sizes: n rows run padded up to the smallest bucket >= n."""

    batch_buckets: tuple[int, ...]

    def check_buckets(self) -> None:
        buckets = self.batch_buckets
        if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] < 1:
            raise ValueError(f"batch_buckets must be increasing positive sizes, not {buckets}")

    @property
    def max_batch(self) -> int:
        return self.batch_buckets[-1]

    def bucket(self, n: int) -> int:
        """The smallest bucket holding n rows."""
        for b in self.batch_buckets:
            if b >= n:
                return b
        raise ValueError(f"{n} rows exceed the largest batch bucket {self.max_batch}")


def buckets_up_to(n: int) -> tuple[int, ...]:
    """Powers of two below n, then n: 1, 2, 4, ..., n (at most 2x padding per step)."""
    if n < 1:
        raise ValueError(f"a batch bucket holds at least 1 row, not {n}")
    return (*(1 << k for k in range(n.bit_length()) if 1 << k < n), n)


@dataclass(frozen=True)
class StaticDecodeConfig(BatchBuckets):
    """Shapes and execution of the static decode path.

    Memory: the LM cache holds max(batch_buckets) x max_len positions and the CRQ cache G times
    as many (the CRQ stream runs at 25 Hz); both double when a row outgrows them, which drops
    the captured graphs (they are captured again on use).
    """

    batch_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    max_len: int = 2048  # LM positions per row
    min_span: int = 256  # attention spans are min_span * 2**k LM positions, capped at max_len
    cuda_graphs: bool = False  # capture and replay per key; ignored (eager) off CUDA
    compile: bool = False  # torch.compile each piece (per key) before running or capturing it
    compile_backend: str = "inductor"
    warmup: int = 2  # eager runs of a piece before its capture (lazy init, autotuning)

    def __post_init__(self) -> None:
        self.check_buckets()
        if not 1 <= self.min_span <= self.max_len:
            raise ValueError("1 <= min_span <= max_len is required")
        if self.warmup < 1:
            raise ValueError("warmup must be >= 1 (a capture needs its lazy state made first)")


def span_for(needed: int, min_span: int, max_len: int) -> int:
    """The attention span bucket covering ``needed`` positions: min_span * 2**k, capped at max_len."""
    assert 0 < needed <= max_len, (needed, max_len)
    span = min_span
    while span < needed:
        span *= 2
    return min(span, max_len)


# -- caches ---------------------------------------------------------------------------------


class StaticKVCache:
    """Keys/values [rows, K, max_len, hd] per layer, allocated once; rows stay compact like
    ``BatchKVCache``'s. ``lengths`` (device) is each row's next position, 0 for padding rows;
    ``host_lengths`` mirrors it so spans are picked without reading the device."""

    def __init__(self, *, num_layers: int, kv_heads: int, head_dim: int, rows: int, max_len: int,
                 min_span: int, dtype: torch.dtype, device: torch.device) -> None:
        self.max_len, self.min_span = max_len, min_span  # spans: min_span * 2**k, up to max_len
        shape = (rows, kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.lengths = torch.zeros(rows, dtype=torch.long, device=device)  # [rows]
        self.active = torch.zeros(rows, dtype=torch.long, device=device)  # [rows] 1 = live: what a pass adds
        self.host_lengths = [0] * rows

    def load(self, row: int, prefix: PrefixKVCache) -> None:
        """Copy a session's prefix cache into ``row``."""
        n = prefix.length
        assert n < self.max_len, (n, self.max_len)
        for dst_k, dst_v, k, v in zip(self.keys, self.values, prefix.keys, prefix.values):
            assert k is not None and v is not None, "prefix cache was never filled"
            dst_k[row, :, :n] = k[0, :, :n]
            dst_v[row, :, :n] = v[0, :, :n]
        self._set(row, n, live=True)

    def move(self, src: int, dst: int) -> None:
        n = self.host_lengths[src]
        for t in [*self.keys, *self.values]:
            t[dst, :, :n] = t[src, :, :n]
        self._set(dst, n, live=True)

    def clear(self, row: int) -> None:
        """Make ``row`` padding: it attends to and writes position 0 only, and never advances."""
        self._set(row, 0, live=False)

    def _set(self, row: int, length: int, *, live: bool) -> None:
        self.lengths[row] = length
        self.active[row] = int(live)
        self.host_lengths[row] = length

    def advance_host(self, n: int) -> None:
        """Mirror one pass over the n live rows (the device side advanced inside the pass)."""
        for i in range(n):
            self.host_lengths[i] += 1

    def grow(self, max_len: int) -> None:
        """Reallocate with room for ``max_len`` positions (graphs holding the old ones go stale)."""
        assert max_len > self.max_len
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                rows, heads, _, hd = old.shape
                new = torch.zeros((rows, heads, max_len, hd), dtype=old.dtype, device=old.device)
                new[:, :, : self.max_len] = old
                store[i] = new
        self.max_len = max_len

    def view(self, rows: int, span: int) -> StaticCacheView:
        return StaticCacheView(self, rows, span)


class StaticCacheView:
    """The ``AttentionCache`` of one pass over rows [:rows], attending over positions [:span]."""

    def __init__(self, cache: StaticKVCache, rows: int, span: int) -> None:
        self.cache, self.rows, self.span = cache, rows, span
        self._mask: Tensor | None = None  # built by the first layer of the pass, shared by all

    def positions(self, n: int, device: torch.device) -> Tensor:
        assert n == 1, "the static cache takes one position per row per pass"
        return self.cache.lengths[: self.rows, None]  # [b, 1]

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        b, span = self.rows, self.span
        assert q.shape[0] == b and q.shape[2] == 1 and k.shape[0] == b, (q.shape, k.shape, b)
        lengths = self.cache.lengths[:b]  # [b]
        index = lengths[:, None, None, None].expand(b, k.shape[1], 1, k.shape[3])  # [b, K, 1, hd]
        keys, values = self.cache.keys[layer][:b], self.cache.values[layer][:b]  # [b, K, max_len, hd]
        keys.scatter_(2, index, k)
        values.scatter_(2, index, v)
        if self._mask is None:
            self._mask = torch.arange(span, device=q.device)[None] <= lengths[:, None]  # [b, span]
        return gqa_attention(q, keys[:, :, :span], values[:, :, :span], self._mask[:, None, None, :])

    def advance(self, n: int) -> None:
        assert n == 1
        self.cache.lengths[: self.rows].add_(self.cache.active[: self.rows])


# -- runners --------------------------------------------------------------------------------

Piece = Callable[[], None]  # reads and writes only the batch's long-lived buffers


class StepRunner(Protocol):
    """Runs one static piece; ``key`` names its shapes, ``state`` the tensors it advances."""

    def run(self, key: Hashable, piece: Piece, state: Sequence[Tensor]) -> None: ...

    def reset(self) -> None: ...


class _Compiled:
    """``torch.compile`` per key (the first piece given for a key stands for all later ones)."""

    def __init__(self, backend: str | None) -> None:
        self._backend = backend
        self._pieces: dict[Hashable, Piece] = {}

    def get(self, key: Hashable, piece: Piece) -> Piece:
        if self._backend is None:
            return piece
        if key not in self._pieces:
            # each (bucket, span) key is one more specialisation of the same code
            dynamo = torch._dynamo.config
            dynamo.recompile_limit = max(dynamo.recompile_limit, 256)
            self._pieces[key] = torch.compile(piece, backend=self._backend, fullgraph=True, dynamic=False)
        return self._pieces[key]

    def reset(self) -> None:
        self._pieces.clear()


class EagerRunner:
    """Runs each piece as it is (optionally compiled): the CPU path."""

    def __init__(self, *, compile_backend: str | None = None) -> None:
        self._compiled = _Compiled(compile_backend)

    def run(self, key: Hashable, piece: Piece, state: Sequence[Tensor]) -> None:
        self._compiled.get(key, piece)()

    def reset(self) -> None:
        self._compiled.reset()


class CudaGraphRunner:
    """One ``torch.cuda.CUDAGraph`` per key: warm up, capture, then replay.

    The pieces copy their results into buffers allocated outside any capture, so graphs never
    read one another's private memory and can share one pool whatever order they replay in.
    Warm-up runs are real runs: ``state`` (the lengths they advance) is put back after each, and
    the keys/values they wrote are written again, equal, by the replay that follows.
    """

    def __init__(self, *, warmup: int, compile_backend: str | None = None) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA graphs need a CUDA device")
        self.warmup = warmup
        self._compiled = _Compiled(compile_backend)
        self._graphs: dict[Hashable, torch.cuda.CUDAGraph] = {}
        self._pool: torch.cuda._POOL_HANDLE | None = None

    @property
    def num_graphs(self) -> int:
        return len(self._graphs)

    def run(self, key: Hashable, piece: Piece, state: Sequence[Tensor]) -> None:
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._graphs[key] = self._capture(self._compiled.get(key, piece), state)
        graph.replay()

    def _capture(self, piece: Piece, state: Sequence[Tensor]) -> torch.cuda.CUDAGraph:
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        saved = [t.clone() for t in state]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                piece()
                for t, s in zip(state, saved):
                    t.copy_(s)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads of the server may use CUDA while the scheduler captures
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            piece()  # recorded, not run: state is untouched
        return graph

    def reset(self) -> None:
        self._graphs.clear()
        self._pool = None  # a fresh pool: the dropped graphs' memory goes back with them
        self._compiled.reset()


class RunnerSettings(Protocol):
    """How a static config's pieces run (StaticDecodeConfig, cosyvoice3's StaticVocoderConfig)."""

    @property
    def cuda_graphs(self) -> bool: ...
    @property
    def compile(self) -> bool: ...
    @property
    def compile_backend(self) -> str: ...
    @property
    def warmup(self) -> int: ...


def make_runner(config: RunnerSettings, device: torch.device) -> StepRunner:
    backend = config.compile_backend if config.compile else None
    if config.cuda_graphs and device.type == "cuda":
        return CudaGraphRunner(warmup=config.warmup, compile_backend=backend)
    if config.cuda_graphs:
        logger.info("CUDA graphs asked for on %s: the static steps run eagerly", device)
    return EagerRunner(compile_backend=backend)


# -- the batch ------------------------------------------------------------------------------


class _Buffers:
    """Everything a piece touches: caches plus copy-in and copy-out buffers for max_batch rows."""

    def __init__(self, runtime: FunAudioChatRuntime, config: StaticDecodeConfig, speech: bool) -> None:
        cfg, dev, dtype = runtime.config, runtime.device, runtime.dtype
        rows, g, d = config.max_batch, cfg.audio.group_size, cfg.hidden_size

        def cache(c, scale: int) -> StaticKVCache:
            return StaticKVCache(num_layers=c.num_hidden_layers, kv_heads=c.num_key_value_heads,
                                 head_dim=c.head_dim, rows=rows, max_len=scale * config.max_len,
                                 min_span=scale * config.min_span, dtype=dtype, device=dev)

        self.lm = cache(cfg.text, 1)
        self.ids = torch.zeros(rows, dtype=torch.long, device=dev)  # [R] last token of each row
        self.logits = torch.zeros(rows, cfg.text.vocab_size, dtype=torch.float32, device=dev)  # [R, V]
        self.crq: StaticKVCache | None = None
        if speech:
            self.crq = cache(cfg.crq, g)  # G stream positions per LM position
            self.groups = torch.zeros(rows, g, dtype=torch.long, device=dev)  # [R, G] speech fed back
            self.has_group = torch.zeros(rows, dtype=torch.bool, device=dev)  # [R]
            self.up = torch.zeros(rows, g, d, dtype=dtype, device=dev)  # [R, G, D] CRQ stream rows
            self.crq_in = torch.zeros(rows, 1, d, dtype=dtype, device=dev)  # [R, 1, D] this sub-step's row
            self.feedback = torch.zeros(rows, dtype=torch.long, device=dev)  # [R] previous speech token
            self.crq_logits = torch.zeros(rows, cfg.audio.codebook_size, dtype=torch.float32, device=dev)


class StaticDecodeBatch:
    """``DecodeBatch`` with static shapes per batch bucket and span; owned by one scheduler thread.

    Buffers are allocated at the first ``add`` (inside inference mode, like the rows' prefill).
    """

    def __init__(self, runtime: FunAudioChatRuntime, *, speech: bool,
                 config: StaticDecodeConfig | None = None) -> None:
        self.runtime, self.speech = runtime, speech
        self.config = config or StaticDecodeConfig()
        self.runner = make_runner(self.config, runtime.device)
        self.rows: list[TurnRow] = []
        self._buf: _Buffers | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @torch.inference_mode()
    def add(self, row: TurnRow, lm_prefix: PrefixKVCache, crq_prefix: PrefixKVCache | None) -> None:
        assert row.speech == self.speech, "row and batch disagree on speech generation"
        if len(self.rows) >= self.config.max_batch:
            raise ValueError(f"the batch is full ({self.config.max_batch} rows)")
        if self._buf is None:
            self._buf = _Buffers(self.runtime, self.config, self.speech)
        buf, slot = self._buf, len(self.rows)
        self._fit(buf.lm, lm_prefix.length + 1)
        buf.lm.load(slot, lm_prefix)
        if buf.crq is not None:
            assert crq_prefix is not None
            self._fit(buf.crq, crq_prefix.length + self.runtime.model.group)
            buf.crq.load(slot, crq_prefix)
        self.rows.append(row)

    @torch.inference_mode()
    def remove(self, row: TurnRow) -> None:
        """Drop a row; the last row moves into its place (as ``DecodeBatch`` does)."""
        assert self._buf is not None
        i, last = self.rows.index(row), len(self.rows) - 1
        for cache in (self._buf.lm, self._buf.crq):
            if cache is not None:
                if i != last:
                    cache.move(last, i)
                cache.clear(last)
        moved = self.rows.pop()
        if i < len(self.rows):
            self.rows[i] = moved

    @torch.inference_mode()
    def step(self) -> list[StepResult]:
        """One decode step for every row; finished rows are removed. Results follow row order."""
        rows = list(self.rows)
        assert rows and self._buf is not None, "step on an empty batch"
        buf, n = self._buf, len(rows)
        g = self.runtime.model.group
        b = self.config.bucket(n)
        for r in rows:
            r.begin_step()
        lm_span = self._span(buf.lm, n, 1)
        crq_span = self._span(buf.crq, n, g) if buf.crq is not None else 0
        self._copy_in(buf, rows)
        self.runner.run(("lm", b, lm_span), lambda: self._lm_piece(b, lm_span), [buf.lm.lengths])
        buf.lm.advance_host(n)
        crq_tokens: Sequence[list[int] | None] = [None] * n
        if buf.crq is not None:
            crq_tokens = self._speech_group(buf, rows, b, crq_span)
        texts = choose_text(rows, buf.logits[:n].clone())  # clone: the next replay overwrites it
        results = [r.apply(t, c) for r, t, c in zip(rows, texts, crq_tokens)]
        for r in rows:
            if r.finished:
                self.remove(r)
        return results

    # -- pieces (static shapes: b rows, spans fixed by the key) -------------------------------
    def _lm_piece(self, b: int, span: int) -> None:
        buf, model = self._buf, self.runtime.model
        assert buf is not None
        emb = model.language_model.embed(buf.ids[:b])  # [b, D]
        x = emb
        if buf.crq is not None:
            fed = (emb + model.speech_group_rows(buf.groups[:b])) / 2  # [b, D]
            x = torch.where(buf.has_group[:b, None], fed, emb)
        logits, hidden = model.language_model(x[:, None], buf.lm.view(b, span))  # [b, V], [b, 1, D]
        buf.logits[:b].copy_(logits)
        if buf.crq is not None:
            buf.up[:b].copy_(model.audio_invert_tower.upsample(hidden + emb[:, None]))  # [b, G, D]

    def _crq_piece(self, b: int, span: int) -> None:
        buf, head = self._buf, self.runtime.model.audio_invert_tower
        assert buf is not None and buf.crq is not None
        rows = buf.crq_in[:b] + head.codebook(buf.feedback[:b])[:, None]  # [b, 1, D]
        buf.crq_logits[:b].copy_(head.stream_logits(rows, buf.crq.view(b, span))[:, -1])  # [b, C]

    # -- eager glue between pieces --------------------------------------------------------------
    def _speech_group(self, buf: _Buffers, rows: list[TurnRow], b: int, span: int) -> list[list[int]]:
        """The CRQ head's G sub-steps: the same stream inputs and choices as ``generate_group``."""
        assert buf.crq is not None
        n, dev = len(rows), self.runtime.device
        pick = speech_chooser(rows)
        buf.feedback[:n].copy_(torch.tensor([r.crq_prev for r in rows]).to(dev))
        chosen: list[Tensor] = []
        for i in range(self.runtime.model.group):
            buf.crq_in[:b].copy_(buf.up[:b, i : i + 1])
            self.runner.run(("crq", b, span), lambda: self._crq_piece(b, span), [buf.crq.lengths])
            buf.crq.advance_host(n)
            tok = pick(buf.crq_logits[:n].clone(), i)  # [n]
            buf.feedback[:n].copy_(tok)
            chosen.append(tok)
        group_tokens: list[list[int]] = torch.stack(chosen, dim=1).tolist()  # [n, G]
        for r, t in zip(rows, group_tokens):
            r.crq_prev = t[-1]
        return group_tokens

    def _copy_in(self, buf: _Buffers, rows: list[TurnRow]) -> None:
        n, dev = len(rows), self.runtime.device
        buf.ids[:n].copy_(torch.tensor([r.ids[-1] for r in rows]).to(dev))
        if buf.crq is not None:
            fed = [r.speech_feedback_group() for r in rows]
            g = self.runtime.model.group
            buf.groups[:n].copy_(torch.tensor([f or [0] * g for f in fed]).to(dev))
            buf.has_group[:n].copy_(torch.tensor([f is not None for f in fed]).to(dev))

    def _span(self, cache: StaticKVCache, n: int, extra: int) -> int:
        """The span for this step's passes (``extra`` new positions per row), growing the cache
        (and dropping stale graphs) when a row would pass its end."""
        needed = max(cache.host_lengths[:n]) + extra
        self._fit(cache, needed)
        return span_for(needed, cache.min_span, cache.max_len)

    def _fit(self, cache: StaticKVCache, needed: int) -> None:
        if needed <= cache.max_len:
            return
        new_len = cache.max_len
        while new_len < needed:
            new_len *= 2
        logger.info("static decode cache grows from %d to %d positions", cache.max_len, new_len)
        cache.grow(new_len)
        self.runner.reset()
