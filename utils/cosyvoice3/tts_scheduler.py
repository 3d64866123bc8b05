"""Continuous batching of the speech-token LLM over many TTS requests (spec §6-7).

Two layers:

* `TokenBatch`, the synchronous core: `TokenDecoder`s (llm_decode.py: one request's tokens,
  length limits, sampler and own generator) whose KV caches sit in one padded, row-compacted
  `BatchKVCache` (shared with the Fun-Audio-Chat runtime). `step()` runs one batched forward of
  the HF Qwen2 backbone for all rows (one new position per row: each row's own RoPE position,
  a mask over its own keys only) and then lets every decoder sample from its row of
  log-probs, on CPU with its own generator (§7.4), so a batched request draws exactly the
  numbers it would draw alone.
* `TTSScheduler`, the driver: requests are queued by `submit`, prefilled alone (a [1, L, D]
  forward, as `TokenDecoder.step` does: prompts of any length, no padding) and join the batch
  for the following steps; finished or cancelled requests leave between steps. `step()` does
  one iteration synchronously; `start()` runs it in a background thread. Each request's tokens
  come out of its `TokenStream` (a blocking or an async iterator) as soon as they are sampled.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from transformers.cache_utils import Cache, DynamicCache

from utils.funaudiochat.kv_cache import BatchKVCache, PrefixKVCache

from .llm import CosyVoice3LM
from .llm_decode import DecodeStep, EndReason, LengthLimits, TokenDecoder
from .ras_sampling import RasConfig, distributions

logger = logging.getLogger(__name__)

StreamEnd = EndReason | Literal["cancelled", "error"]


# -- the batched forward -----------------------------------------------------------------------
class _PassCache(Cache):
    """transformers' Cache interface over a BatchKVCache for one decode pass: the attention
    layers hand it each layer's new keys/values and get the padded rows back."""

    def __init__(self, kv: BatchKVCache) -> None:
        super().__init__()
        self.kv = kv

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int,
               cache_kwargs: dict[str, object] | None = None) -> tuple[Tensor, Tensor]:
        return self.kv.store(layer_idx, key_states, value_states)  # [B, K, span, hd] each

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        return max(self.kv.lengths, default=0)

    def get_max_cache_shape(self) -> int | None:
        return None


def _prefix(cache: DynamicCache, num_layers: int) -> PrefixKVCache:
    """A single request's DynamicCache (after its prefill) as the funaudiochat prefix layout."""
    prefix = PrefixKVCache(num_layers)
    keys: list[Tensor | None]
    values: list[Tensor | None]
    if hasattr(cache, "key_cache"):  # transformers <= 4.55
        keys, values = list(cache.key_cache), list(cache.value_cache)
    else:  # later releases keep one object per layer
        keys = [layer.keys for layer in cache.layers]  # type: ignore[attr-defined]
        values = [layer.values for layer in cache.layers]  # type: ignore[attr-defined]
    first = keys[0]
    assert len(keys) == num_layers and first is not None and first.shape[0] == 1, len(keys)
    prefix.keys, prefix.values = keys, values  # [1, K, L, hd] per layer
    prefix.length = int(first.shape[2])
    return prefix


def batched_forward(lm: CosyVoice3LM, x: Tensor, kv: BatchKVCache) -> Tensor:
    """x [B, 1, D]: each row's next input embedding -> final-normed hidden [B, D]; every row's
    cache grows by one. Row b sits at position kv.lengths[b] and sees only its own keys."""
    b = kv.num_rows
    assert x.dim() == 3 and x.shape[0] == b and x.shape[1] == 1, (tuple(x.shape), b)
    allowed = kv.pass_mask(x.device)  # bool [B, span]
    # an additive mask: transformers passes a 4D mask through to SDPA unchanged; 0.0 on the
    # row's own keys leaves their scores exactly as alone, the minimum zeroes the padding
    mask = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device)
    mask.masked_fill_(~allowed, torch.finfo(x.dtype).min)
    out = lm.llm.decoder(inputs_embeds=x, attention_mask=mask[:, None, None, :],  # [B, 1, 1, span]
                         position_ids=kv.positions(1, x.device), past_key_values=_PassCache(kv),
                         use_cache=True)
    kv.advance(1)
    return out.last_hidden_state[:, -1]  # [B, D]


class TokenBatch:
    """Decoders that have had their first (prefill) step, advanced together one step at a time.

    Row i of the KV cache belongs to `rows[i]`; a leaving row is replaced by the last one
    (BatchKVCache's compaction), so the order of `rows` changes as requests leave.
    """

    def __init__(self, lm: CosyVoice3LM, *, initial_len: int = 256) -> None:
        self.lm = lm
        self._initial_len = initial_len
        self.rows: list[TokenDecoder] = []
        self._kv: BatchKVCache | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def _new_kv(self) -> BatchKVCache:
        q = self.lm.llm.decoder.config
        head_dim = getattr(q, "head_dim", None) or q.hidden_size // q.num_attention_heads
        w = self.lm.speech_embedding.weight
        return BatchKVCache(num_layers=q.num_hidden_layers, kv_heads=q.num_key_value_heads,
                            head_dim=head_dim, dtype=w.dtype, device=w.device,
                            initial_len=self._initial_len)

    @torch.inference_mode()
    def add(self, decoder: TokenDecoder) -> None:
        """Join after the decoder's prefill step; it gives its KV cache to the batch."""
        if decoder.finished or not decoder.tokens:
            raise ValueError("a decoder joins after a prefill step that emitted a token")
        cache = decoder.take_cache()
        if cache is None:
            raise ValueError("the decoder has no KV cache to hand over")
        if self._kv is None:
            self._kv = self._new_kv()
        self._kv.add_row(_prefix(cache, self.lm.llm.decoder.config.num_hidden_layers))
        self.rows.append(decoder)

    def remove(self, decoder: TokenDecoder) -> None:
        i = next(i for i, r in enumerate(self.rows) if r is decoder)
        self._remove_at(i)

    def _remove_at(self, i: int) -> None:
        assert self._kv is not None
        self._kv.remove_row(i)  # the last row moves into row i
        self.rows[i] = self.rows[-1]
        self.rows.pop()
        if not self.rows:
            self._kv = None  # free the padded cache while idle

    @torch.inference_mode()
    def step(self) -> list[tuple[TokenDecoder, DecodeStep | Exception]]:
        """One batched LLM step: (decoder, its step or the SamplingFailed it raised) per row,
        in the order of `rows` before the step. Finished and failed rows have left after it."""
        if not self.rows:
            return []
        assert self._kv is not None
        last = torch.tensor([r.tokens[-1] for r in self.rows], device=self.lm.device)
        x = self.lm.speech_embedding(last)[:, None]  # [B, 1, D]
        hidden = batched_forward(self.lm, x, self._kv)  # [B, D]
        logp = self.lm.log_probs(hidden).cpu()  # fp32 [B, V]: one transfer for every row
        # every row's softmax and best entries at once; a row's top_k is a prefix of the largest
        dists = distributions(logp, max(r.sampler.top_k for r in self.rows))
        results: list[tuple[TokenDecoder, DecodeStep | Exception]] = []
        leaving: list[int] = []
        for i, decoder in enumerate(self.rows):
            try:
                results.append((decoder, decoder.accept(logp[i], hidden[i], dists[i])))
            except Exception as exc:  # SamplingFailed: this request ends, the others go on
                results.append((decoder, exc))
                leaving.append(i)
                continue
            if decoder.finished:
                leaving.append(i)
        for i in reversed(leaving):  # descending, so each swap-in is a row that stays
            self._remove_at(i)
        return results


# -- per-request streams -----------------------------------------------------------------------
_END = object()  # end-of-stream sentinel


class TokenStream:
    """The speech tokens of one submitted request, as they are sampled.

    Iterate it (or `async for` when submitted from an event loop) for the tokens; `steps()`
    gives every `DecodeStep` instead (log-probs, the final stop draw). A request that fails
    (`SamplingFailed` before min_len) raises at the end of the stream, after the tokens it
    emitted, like `generate_speech_tokens`. `end` says why the stream ended.
    """

    def __init__(self, scheduler: TTSScheduler, request_id: int) -> None:
        self._scheduler = scheduler
        self.request_id = request_id
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._sync: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._async: asyncio.Queue[object] | None = asyncio.Queue() if self._loop else None
        self.tokens: list[int] = []  # emitted so far (written by the scheduler)
        self.end: StreamEnd | None = None
        self.done = threading.Event()

    def cancel(self) -> None:
        """End the request before its next step; its row leaves the batch."""
        self._scheduler._request_cancel(self)

    def _deliver(self, item: object) -> None:
        """Called by the scheduler (its thread, or the caller of `TTSScheduler.step`)."""
        if isinstance(item, DecodeStep) and item.token is not None:
            self.tokens.append(item.token)
        if self._loop is not None and self._async is not None:
            self._loop.call_soon_threadsafe(self._async.put_nowait, item)
        else:
            self._sync.put(item)

    def _close(self, end: StreamEnd, error: BaseException | None = None) -> None:
        self.end = end
        if error is not None:
            self._deliver(error)
        self._deliver(_END)
        self.done.set()

    def steps(self) -> Iterator[DecodeStep]:
        if self._loop is not None:
            raise RuntimeError("this stream was submitted from an event loop; use 'async for'")
        while (item := self._sync.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, DecodeStep)
            yield item
        self._sync.put(_END)  # a second iteration ends at once instead of blocking

    def __iter__(self) -> Iterator[int]:
        return (s.token for s in self.steps() if s.token is not None)

    async def __aiter__(self) -> AsyncIterator[int]:
        if self._async is None:
            raise RuntimeError("this stream was submitted outside an event loop; iterate it normally")
        while (item := await self._async.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, DecodeStep)
            if item.token is not None:
                yield item.token
        self._async.put_nowait(_END)


@dataclass
class _Request:
    lm_input: Tensor  # [1, L, D]
    limits: LengthLimits
    sampler: RasConfig | None
    generator: torch.Generator
    stream: TokenStream


def request_generator(seed: int | None) -> torch.Generator:
    """The request's own CPU generator (§7.4: the sampler always draws on CPU); an unseeded
    request gets a fresh random seed, never torch's global generator."""
    gen = torch.Generator(device="cpu")
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


class TTSScheduler:
    """Continuous batching of speech-token decoding; at most `max_batch` requests decode at
    once, the rest wait in submission order. Use either `start()` (a background thread that
    owns the model) or call `step()` yourself, not both."""

    def __init__(self, lm: CosyVoice3LM, *, max_batch: int = 16, prefills_per_step: int = 4) -> None:
        if max_batch < 1 or prefills_per_step < 1:
            raise ValueError("max_batch and prefills_per_step must be >= 1")
        self.lm = lm
        self.max_batch, self.prefills_per_step = max_batch, prefills_per_step
        self.batch = TokenBatch(lm)
        self._cond = threading.Condition()
        self._pending: deque[_Request] = deque()
        self._cancels: list[TokenStream] = []
        self._streams: dict[int, TokenStream] = {}  # id(decoder) -> stream, for active rows
        self._next_id = 0
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- public ------------------------------------------------------------------------------
    def submit(self, lm_input: Tensor, limits: LengthLimits, *, sampler: RasConfig | None = None,
               seed: int | None = None, generator: torch.Generator | None = None) -> TokenStream:
        """Queue one request: lm_input [1, L, D] from `CosyVoice3LM.build_lm_input`, its length
        limits (`LengthLimits.for_text`), a sampler (default: the config's RAS) and either a
        seed or a CPU generator of its own."""
        assert lm_input.dim() == 3 and lm_input.shape[0] == 1, tuple(lm_input.shape)
        if seed is not None and generator is not None:
            raise ValueError("pass a seed or a generator, not both")
        with self._cond:
            if self._stopping:
                raise RuntimeError("scheduler is stopped")
            stream = TokenStream(self, self._next_id)
            self._next_id += 1
            gen = generator if generator is not None else request_generator(seed)
            self._pending.append(_Request(lm_input, limits, sampler, gen, stream))
            self._cond.notify()
        return stream

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("scheduler already started")
        self._thread = threading.Thread(target=self._run, name="cosyvoice3-tts-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Cancel everything (streams end with end='cancelled') and join the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        else:
            self._shutdown()

    @property
    def num_active(self) -> int:
        return len(self.batch)

    @property
    def num_pending(self) -> int:
        return len(self._pending)

    @property
    def has_work(self) -> bool:
        return bool(self._pending or self._cancels or len(self.batch))

    def step(self) -> None:
        """One iteration: apply cancels, prefill up to `prefills_per_step` waiting requests
        (each yields its first token now), then one batched step for every active request."""
        if self._thread is not None and threading.current_thread() is not self._thread:
            raise RuntimeError("the scheduler thread is running; do not call step() yourself")
        with torch.inference_mode():
            with self._cond:
                cancels, self._cancels = self._cancels, []
                for stream in cancels:  # still queued: drop
                    for req in [r for r in self._pending if r.stream is stream]:
                        self._pending.remove(req)
                        stream._close("cancelled")
                room = max(0, self.max_batch - len(self.batch))
                admitted = [self._pending.popleft()
                            for _ in range(min(room, self.prefills_per_step, len(self._pending)))]
            self._cancel_active(cancels)
            for req in admitted:
                self._admit(req)
            self._decode()

    # -- internals ---------------------------------------------------------------------------
    def _request_cancel(self, stream: TokenStream) -> None:
        with self._cond:
            if not stream.done.is_set():
                self._cancels.append(stream)
                self._cond.notify()

    def _cancel_active(self, cancels: Sequence[TokenStream]) -> None:
        for decoder in list(self.batch.rows):
            stream = self._streams[id(decoder)]
            if any(stream is c for c in cancels):
                self.batch.remove(decoder)
                del self._streams[id(decoder)]
                stream._close("cancelled")

    def _admit(self, req: _Request) -> None:
        """Prefill alone (its first step), then join the batch unless already finished."""
        stream = req.stream
        try:
            decoder = TokenDecoder(self.lm, req.lm_input, req.limits, sampler=req.sampler,
                                   generator=req.generator)
            if decoder.finished:  # max_len 0: no step at all, like upstream
                stream._close("max_len")
                return
            stream._deliver(decoder.step())
            end = decoder.end  # (mypy narrows `finished` as if the step could not change it)
            if end is not None:
                stream._close(end)
                return
            self.batch.add(decoder)
        except Exception as exc:  # SamplingFailed at step 0, a bad input, out of memory, ...
            logger.info("request %d ended at its prefill: %r", stream.request_id, exc)
            stream._close("error", exc)
            return
        self._streams[id(decoder)] = stream

    def _decode(self) -> None:
        if not len(self.batch):
            return
        rows = list(self.batch.rows)
        try:
            results = self.batch.step()
        except Exception as exc:  # the batched forward itself failed: end every row in it
            logger.exception("batched decode step failed; ending %d requests", len(rows))
            self.batch = TokenBatch(self.lm)
            for decoder in rows:
                self._streams.pop(id(decoder))._close("error", exc)
            return
        for decoder, result in results:
            stream = self._streams[id(decoder)]
            if isinstance(result, Exception):
                del self._streams[id(decoder)]
                stream._close("error", result)
                continue
            stream._deliver(result)
            if decoder.finished:
                del self._streams[id(decoder)]
                assert decoder.end is not None
                stream._close(decoder.end)

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not (self._stopping or self.has_work):
                        self._cond.wait()
                    if self._stopping:
                        break
                self.step()
        except Exception as exc:  # never leave streams waiting on a dead thread
            logger.exception("tts scheduler thread crashed")
            self._shutdown(exc)
            return
        self._shutdown()

    def _shutdown(self, exc: Exception | None = None) -> None:
        with self._cond:
            self._stopping = True
            pending, self._pending = list(self._pending), deque()
        for decoder in list(self.batch.rows):
            self.batch.remove(decoder)
        streams = [*self._streams.values(), *(r.stream for r in pending)]
        self._streams.clear()
        for stream in streams:
            if exc is None:
                stream._close("cancelled")
            else:
                stream._close("error", exc)
