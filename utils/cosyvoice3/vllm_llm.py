"""Speech tokens from vLLM instead of our own scheduler (`--use-vllm`; tts spec §11).

`VllmTokenSource` has `TTSScheduler.submit`'s surface, so `CosyVoice3Tts` uses either. The LLM
is exported once as a plain Qwen2ForCausalLM (vllm_export.py) and run by vLLM's engine with
prompt embeddings: each request's §6 lm_input goes in as `prompt_embeds`, and vLLM's own
continuous batching decodes every request in flight. Sampling is upstream's vLLM path, not
RAS: top-k 25 at temperature 1, stop ids masked until min_len (no redraws), vLLM's RNG (a
request seed, when given, makes a run repeatable on the same engine, not equal to the torch
path). One thread owns the engine: it adds and aborts requests between steps.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .llm_config import LLMConfig
from .llm_decode import LengthLimits
from .ras_sampling import RasConfig

logger = logging.getLogger(__name__)

VLLM_TOP_K = 25  # upstream's SamplingParams for CosyVoice3 on vLLM
_END = object()


class VllmTokenStream:
    """One request's speech tokens as vLLM produces them (iterate it; blocking)."""

    def __init__(self, source: VllmTokenSource, request_id: str) -> None:
        self._source, self.request_id = source, request_id
        self._items: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.tokens: list[int] = []
        self.done = threading.Event()

    def cancel(self) -> None:
        self._source._abort(self)

    def _deliver(self, tokens: list[int]) -> None:
        self.tokens.extend(tokens)
        for token in tokens:
            self._items.put(token)

    def _close(self, error: BaseException | None = None) -> None:
        if not self.done.is_set():
            self.done.set()
            self._items.put(error if error is not None else _END)

    def __iter__(self) -> Iterator[int]:
        while (item := self._items.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, int)
            yield item


class VllmTokenSource:
    def __init__(self, model_dir: str | Path, cfg: LLMConfig, *, dtype: str = "bfloat16",
                 gpu_memory_utilization: float = 0.2, top_k: int = VLLM_TOP_K, **engine_kwargs: Any) -> None:
        from vllm import EngineArgs, LLMEngine

        args = EngineArgs(model=str(model_dir), skip_tokenizer_init=True, enable_prompt_embeds=True,
                          dtype=dtype, gpu_memory_utilization=gpu_memory_utilization, **engine_kwargs)
        self._engine = LLMEngine.from_engine_args(args)
        self._dtype, self._top_k = getattr(torch, dtype), top_k
        self._speech_tokens, self._stop = cfg.speech_token_size, list(cfg.stop_token_ids)
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._adds: list[tuple[VllmTokenStream, dict[str, Any], Any]] = []
        self._aborts: list[VllmTokenStream] = []
        self._streams: dict[str, VllmTokenStream] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="cosyvoice3-vllm", daemon=True)
        self._thread.start()

    def submit(self, lm_input: Tensor, limits: LengthLimits, *, sampler: RasConfig | None = None,
               generator: torch.Generator | None = None) -> VllmTokenStream:
        """lm_input [1, L, D]; `sampler` is ignored (vLLM samples top-k 25, see the docstring)."""
        from vllm import SamplingParams

        stream = VllmTokenStream(self, f"tts-{next(self._ids)}")
        if limits.max_len < 1:
            stream._close()
            return stream
        params = SamplingParams(
            temperature=1.0, top_p=1.0, top_k=self._top_k, stop_token_ids=self._stop,
            min_tokens=min(limits.min_len, limits.max_len), max_tokens=limits.max_len, detokenize=False,
            seed=None if generator is None else generator.initial_seed() % 2**63)
        prompt = {"prompt_embeds": lm_input[0].detach().to("cpu", self._dtype)}
        with self._cond:
            if self._stopping:
                raise RuntimeError("the vLLM token source is stopped")
            self._adds.append((stream, prompt, params))
            self._cond.notify()
        return stream

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(10)

    def _abort(self, stream: VllmTokenStream) -> None:
        with self._cond:
            self._aborts.append(stream)
            self._cond.notify()

    def _run(self) -> None:
        try:
            while self._next_step():
                self._step()
        except Exception as exc:  # never leave a request waiting on a dead engine
            logger.exception("the vLLM engine failed")
            for stream in list(self._streams.values()) + [s for s, _, _ in self._adds]:
                stream._close(exc)
            return
        for stream in list(self._streams.values()):
            stream._close()

    def _next_step(self) -> bool:
        """Applies queued adds and aborts; waits while idle; False when stopping."""
        with self._cond:
            while not (self._stopping or self._adds or self._aborts or self._streams):
                self._cond.wait()
            adds, self._adds = self._adds, []
            aborts, self._aborts = self._aborts, []
            stopping = self._stopping
        for stream, prompt, params in adds:
            self._engine.add_request(stream.request_id, prompt, params)
            self._streams[stream.request_id] = stream
        for stream in aborts:
            if self._streams.pop(stream.request_id, None) is not None:
                self._engine.abort_request([stream.request_id])
            stream._close()
        return not stopping

    def _step(self) -> None:
        if not self._streams:
            return
        for output in self._engine.step():
            stream = self._streams.get(output.request_id)
            if stream is None:
                continue
            ids = list(output.outputs[0].token_ids)  # cumulative: everything generated so far
            stream._deliver([t for t in ids[len(stream.tokens):] if t < self._speech_tokens])
            if output.finished:
                del self._streams[output.request_id]
                stream._close()
