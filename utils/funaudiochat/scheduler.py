"""Continuous batching across sessions in one background thread.

Each loop iteration: apply cancellations, prefill at most ``prefills_per_step`` new turns (they
join the batch right after), then run one decode step for every active session together.
Results go to each turn's ``TurnHandle``: a blocking iterator, or, when ``submit`` is called
from a running event loop, an async iterator fed through ``loop.call_soon_threadsafe`` so the
loop never blocks on model work.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import torch

from .decoding import DecodeBatch, StepResult, TurnRow
from .generation import Mode
from .loading import FunAudioChatRuntime
from .sampling import SamplingParams
from .session import ConversationState, UserTurn, start_turn
from .static_decode import StaticDecodeBatch, StaticDecodeConfig

logger = logging.getLogger(__name__)

_END = object()  # end-of-stream sentinel


class TurnHandle:
    """The stream of one submitted turn. Iterate it (sync or async) and ``cancel()`` at will."""

    def __init__(self, scheduler: Scheduler, on_step: Callable[[StepResult], None] | None) -> None:
        self._scheduler = scheduler
        self._on_step = on_step
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._sync: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._async: asyncio.Queue[object] | None = asyncio.Queue() if self._loop else None
        self.done = threading.Event()

    def cancel(self) -> None:
        """Stop the turn before its next step; its decode cache is freed by the scheduler."""
        self._scheduler._request_cancel(self)

    def _deliver(self, item: object) -> None:
        """Called on the scheduler thread."""
        if isinstance(item, StepResult) and self._on_step is not None:
            self._on_step(item)
        if item is _END or isinstance(item, BaseException):
            self.done.set()
        if self._loop is not None and self._async is not None:
            self._loop.call_soon_threadsafe(self._async.put_nowait, item)
        else:
            self._sync.put(item)

    def __iter__(self) -> Iterator[StepResult]:
        if self._loop is not None:
            raise RuntimeError("this handle was submitted from an event loop; use 'async for'")
        while (item := self._sync.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, StepResult)
            yield item

    async def __aiter__(self) -> AsyncIterator[StepResult]:
        if self._async is None:
            raise RuntimeError("this handle was submitted outside an event loop; iterate it normally")
        while (item := await self._async.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, StepResult)
            yield item


@dataclass
class _Request:
    state: ConversationState
    turn: UserTurn
    params: SamplingParams
    speech: bool
    handle: TurnHandle


class Scheduler:
    """Owns the decode batches; the only thread that runs the model once started.

    ``static`` switches decode to ``StaticDecodeBatch`` (static shapes per batch bucket, CUDA
    graphs when asked for and on CUDA); None keeps the eager ``DecodeBatch``.
    """

    def __init__(self, runtime: FunAudioChatRuntime, *, max_batch: int = 32,
                 prefills_per_step: int = 1, static: StaticDecodeConfig | None = None) -> None:
        if static is not None and max_batch > static.max_batch:
            raise ValueError(f"max_batch {max_batch} exceeds the largest static bucket {static.max_batch}")
        self.runtime, self.static = runtime, static
        self.max_batch, self.prefills_per_step = max_batch, prefills_per_step
        self._cond = threading.Condition()
        self._pending: deque[_Request] = deque()
        self._cancels: list[TurnHandle] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._batches = {True: self._new_batch(speech=True), False: self._new_batch(speech=False)}
        self._active: dict[int, tuple[TurnRow, _Request]] = {}  # id(row) -> row, request
        # taken off the queue but not yet busy: start_turn marks a state busy only after prefill
        self._admitting: list[_Request] = []

    def _new_batch(self, *, speech: bool) -> DecodeBatch | StaticDecodeBatch:
        if self.static is None:
            return DecodeBatch(self.runtime, speech=speech)
        return StaticDecodeBatch(self.runtime, speech=speech, config=self.static)

    # -- public ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("scheduler already started")
        self._thread = threading.Thread(target=self._run, name="funaudiochat-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Cancel everything and join the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(
        self,
        state: ConversationState,
        turn: UserTurn,
        params: SamplingParams | None = None,
        *,
        mode: Mode = "s2s",
        on_step: Callable[[StepResult], None] | None = None,
    ) -> TurnHandle:
        """Queue a turn. ``on_step`` (optional) runs on the scheduler thread for every step."""
        if mode not in ("s2s", "s2t"):
            raise ValueError(f"mode must be 's2s' or 's2t', not {mode!r}")
        handle = TurnHandle(self, on_step)
        with self._cond:
            if self._stopping or self._thread is None:
                raise RuntimeError("scheduler is not running")
            if state.busy or any(r.state is state for r in [*self._pending, *self._admitting]):
                raise RuntimeError("this conversation already has a turn in progress")
            self._pending.append(_Request(state, turn, params or SamplingParams(), mode == "s2s", handle))
            self._cond.notify()
        return handle

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def num_active(self) -> int:
        return len(self._active)

    def queue_position(self, handle: TurnHandle) -> int | None:
        """1-based place among turns waiting for a batch slot; None once admitted or done."""
        with self._cond:
            for place, req in enumerate(self._pending, start=1):
                if req.handle is handle:
                    return place
        return None

    # -- scheduler thread --------------------------------------------------------------------
    def _request_cancel(self, handle: TurnHandle) -> None:
        with self._cond:
            self._cancels.append(handle)
            self._cond.notify()

    def _run(self) -> None:
        # Everything this thread creates (batched caches included) must be an inference
        # tensor: a cache made inside a step and filled outside one is an error in torch.
        with torch.inference_mode():
            try:
                self._loop()
            except Exception as exc:  # never leave sessions waiting on a dead thread
                logger.exception("scheduler thread crashed")
                self._fail_all(exc)

    def _fail_all(self, exc: Exception) -> None:
        with self._cond:
            self._stopping = True
            handles = [req.handle for _, req in self._active.values()] + [r.handle for r in self._pending]
            self._active.clear()
            self._pending.clear()
        for handle in handles:
            handle._deliver(exc)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._stopping or self._pending or self._cancels or self._active):
                    self._cond.wait()
                if self._stopping:
                    break
                cancels, self._cancels = self._cancels, []
                room = max(0, self.max_batch - len(self._active))
                n_admit = min(room, self.prefills_per_step, len(self._pending))
                admitted = [self._pending.popleft() for _ in range(n_admit)]
                self._admitting = list(admitted)
                for h in cancels:  # cancelled before admission: drop from the queue
                    for r in [r for r in self._pending if r.handle is h]:
                        self._pending.remove(r)
                        h._deliver(_END)
            for req in admitted:
                self._admit(req)
            # after admission, so a cancel that raced with its own turn's prefill is not lost
            self._apply_cancels(cancels)
            with self._cond:
                self._admitting = []
            for batch in self._batches.values():
                if len(batch):
                    self._step(batch)
        self._shutdown()

    def _apply_cancels(self, handles: list[TurnHandle]) -> None:
        for key, (row, req) in list(self._active.items()):
            if req.handle in handles:
                self._batches[row.speech].remove(row)
                self._finish(key, req)

    def _admit(self, req: _Request) -> None:
        try:
            prepared = start_turn(self.runtime, req.state, req.turn, req.params, speech=req.speech)
        except Exception as exc:  # a bad request must not take the scheduler down
            logger.exception("prefill failed")
            req.state.busy = False
            req.handle._deliver(exc)
            return
        key = id(prepared.row)
        self._active[key] = (prepared.row, req)
        if not prepared.row.finished:
            try:
                self._batches[req.speech].add(prepared.row, prepared.lm_cache, prepared.crq_cache)
            except Exception as exc:  # e.g. out of memory: fail this turn, keep serving others
                logger.exception("joining the decode batch failed")
                req.handle._deliver(exc)
                self._finish(key, req, deliver_end=False)
                return
        req.handle._deliver(prepared.first)
        if prepared.row.finished:
            self._finish(key, req)

    def _step(self, batch: DecodeBatch | StaticDecodeBatch) -> None:
        rows = list(batch.rows)
        try:
            results = batch.step()
        except Exception as exc:
            logger.exception("decode step failed; ending %d turns", len(rows))
            self._batches[batch.speech] = self._new_batch(speech=batch.speech)
            for row in rows:
                _, req = self._active[id(row)]
                req.handle._deliver(exc)
                self._finish(id(row), req, deliver_end=False)
            return
        for row, result in zip(rows, results):
            _, req = self._active[id(row)]
            req.handle._deliver(result)
            if result.finished:
                self._finish(id(row), req)

    def _finish(self, key: int, req: _Request, *, deliver_end: bool = True) -> None:
        del self._active[key]
        req.state.finish_turn()
        if deliver_end:
            req.handle._deliver(_END)

    def _shutdown(self) -> None:
        for key, (row, req) in list(self._active.items()):
            self._batches[row.speech].remove(row)
            self._finish(key, req)
        for req in self._pending:
            req.handle._deliver(_END)
        self._pending.clear()
