"""The worker subprocess side: load one handler, then serve requests until told to stop.

The handler is named by an import path ("package.module:Class") and built inside the
child, so CUDA is only ever initialised there (spawn start method). The parent drives
shutdown; the child ignores SIGINT so Ctrl-C in a terminal does not kill it mid-request.

Two threads: the reader takes every message off the pipe, answers pings at once and marks
cancellations; the serving thread runs the handler one request (or batch) at a time; a
stream-batching handler gets the queued pushes and finishes of several streams in one call. A
handler with `max_concurrent > 1` (one whose requests wait on work batched elsewhere, like
the CosyVoice3 TTS scheduler) has its requests run by that many threads instead.
"""

from __future__ import annotations

import importlib
import logging
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from web_demo.server.errors import BadRequest, EngineBusy, ServingError
from web_demo.server.workers.handler import (
    DEFAULT_MAX_STREAMS,
    BatchHandler,
    Handler,
    StreamBatchHandler,
    StreamCall,
    StreamHandler,
)
from web_demo.server.workers.ipc import (
    Cancel,
    CloseStream,
    Done,
    InitFailed,
    OpenStream,
    Ping,
    Pong,
    Ready,
    Request,
    RequestMessage,
    Result,
    Shutdown,
    StreamFinish,
    StreamPush,
    ToParent,
    failure,
)

logger = logging.getLogger(__name__)

_Queued = RequestMessage | CloseStream  # what the reader hands to the serving thread


def load_handler(path: str, init_kwargs: dict[str, Any]) -> Handler:
    module_name, _, attr = path.partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    return factory(**init_kwargs)  # type: ignore[no-any-return]


def worker_main(conn: Connection, handler_path: str, init_kwargs: dict[str, Any],
                log_level: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level,
                        format="%(asctime)s %(levelname)s [worker] %(name)s: %(message)s")
    try:
        handler = load_handler(handler_path, init_kwargs)
    except Exception as exc:
        logger.exception("worker init failed")
        conn.send(InitFailed(f"{type(exc).__name__}: {exc}"))
        return
    _Server(handler, conn).run()


class _Server:
    """Serves one handler over one pipe; owns the streams' state."""

    def __init__(self, handler: Handler, conn: Connection) -> None:
        self._handler = handler
        self._conn = conn
        self._send_lock = threading.Lock()  # the reader thread sends pongs, this one results
        self._inbox: queue.SimpleQueue[_Queued | Shutdown] = queue.SimpleQueue()
        self._backlog: deque[_Queued | Shutdown] = deque()  # drained from the inbox to form batches
        self._cancelled: set[int] = set()
        self._steps = _StepClock()  # read by the reader thread for pongs
        self._streams: dict[int, Any] = {}
        self._batcher = handler if isinstance(handler, BatchHandler) and handler.max_batch > 1 else None
        self._stream_batcher = (handler if isinstance(handler, StreamBatchHandler)
                                and handler.max_stream_batch > 1 else None)
        self._max_streams: int = getattr(handler, "max_streams", DEFAULT_MAX_STREAMS)
        concurrent: int = getattr(handler, "max_concurrent", 1)
        self._pool = (ThreadPoolExecutor(concurrent, thread_name_prefix="worker-request")
                      if concurrent > 1 else None)

    def run(self) -> None:
        self._send(Ready(self._handler.info()))
        threading.Thread(target=self._read_loop, daemon=True, name="worker-reader").start()
        while not isinstance(message := self._next(), Shutdown):
            if self._pool is not None and isinstance(message, Request):
                self._pool.submit(self._serve, message)
            else:
                self._serve(message)
        if self._pool is not None:
            self._cancelled.update(self._steps.keys())  # running requests stop at their next step
            shutdown = getattr(self._handler, "shutdown", None)
            if shutdown is not None:
                shutdown()  # unblocks requests waiting on the handler's own threads
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _send(self, message: ToParent) -> None:
        with self._send_lock:
            self._conn.send(message)

    def _read_loop(self) -> None:
        """Cancels take effect between steps of the request being served, so read them here."""
        try:
            while True:
                message = self._conn.recv()
                if isinstance(message, Ping):
                    self._send(Pong(message.seq, self._steps.oldest_age()))
                elif isinstance(message, Cancel):
                    self._cancelled.add(message.request_id)
                else:
                    self._inbox.put(message)
        except (EOFError, OSError):
            self._inbox.put(Shutdown())  # the parent is gone

    def _next(self) -> _Queued | Shutdown:
        return self._backlog.popleft() if self._backlog else self._inbox.get()

    def _serve(self, message: _Queued) -> None:
        if isinstance(message, CloseStream):
            try:
                self._close_stream(message.stream_id)
            except Exception:
                logger.exception("closing stream %d failed", message.stream_id)
            return
        rid = message.request_id
        if self._take_cancelled(rid):  # cancelled while still queued
            return
        try:
            self._dispatch(message)
        except Exception as exc:
            self._fail(rid, exc)
        finally:
            self._cancelled.discard(rid)

    def _dispatch(self, message: RequestMessage) -> None:
        if isinstance(message, Request) and self._batcher is not None:
            self._serve_batch(self._batcher, [message, *self._same_type_queued(self._batcher, message)])
        elif isinstance(message, Request):
            body = message.body
            self._run(message.request_id, lambda: self._handler.handle(body))
        elif isinstance(message, (StreamPush, StreamFinish)) and self._stream_batcher is not None:
            batcher = self._stream_batcher
            self._serve_stream_batch(batcher, [message, *self._other_streams_queued(batcher, message)])
        elif isinstance(message, OpenStream):
            self._open_stream(message)
        elif isinstance(message, StreamPush):
            self._push(message)
        else:
            self._finish_stream(message)

    def _run(self, rid: int, start: Callable[[], Iterable[Any]]) -> None:
        """Runs `start()` and steps its iterator, timing each step for the parent's pings."""
        results: Iterator[Any] | None = None
        try:
            while rid not in self._cancelled:
                self._steps.start(rid)
                try:
                    if results is None:
                        results = iter(start())
                    result = next(results)
                except StopIteration:
                    self._send(Done(rid))
                    return
                finally:
                    self._steps.stop(rid)
                self._send(Result(rid, result))
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()  # runs the handler's cleanup when it was cancelled mid-way

    def _fail(self, rid: int, exc: Exception) -> None:
        if isinstance(exc, ServingError):
            logger.info("request %d failed: %s: %s", rid, type(exc).__name__, exc)
        else:
            logger.exception("request %d failed", rid)
        self._send(failure(rid, exc))

    def _take_cancelled(self, rid: int) -> bool:
        if rid in self._cancelled:
            self._cancelled.discard(rid)
            return True
        return False

    # ---- batching -----------------------------------------------------------------

    def _same_type_queued(self, batcher: BatchHandler, first: Request) -> list[Request]:
        """Up to max_batch - 1 queued requests of first's type; the rest keep their order."""
        while True:
            try:
                self._backlog.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        taken: list[Request] = []
        kept: deque[_Queued | Shutdown] = deque()
        for message in self._backlog:
            if (len(taken) < batcher.max_batch - 1 and isinstance(message, Request)
                    and type(message.body) is type(first.body)):
                taken.append(message)
            else:
                kept.append(message)
        self._backlog = kept
        return taken

    def _serve_batch(self, batcher: BatchHandler, requests: list[Request]) -> None:
        live = [r for r in requests if not self._take_cancelled(r.request_id)]
        try:
            outcomes: list[list[Any] | Exception] = (
                list(self._batch_outcomes(batcher, [r.body for r in live])) if live else [])
        except Exception as exc:
            logger.exception("a batch of %d requests failed", len(live))
            outcomes = [exc] * len(live)
        for request, outcome in zip(live, outcomes, strict=True):
            if isinstance(outcome, Exception):
                self._send(failure(request.request_id, outcome))
                continue
            for result in outcome:
                self._send(Result(request.request_id, result))
            self._send(Done(request.request_id))
        for request in requests:
            self._cancelled.discard(request.request_id)

    def _batch_outcomes(self, batcher: BatchHandler,
                        bodies: list[Any]) -> list[list[Any] | ServingError]:
        self._steps.start(-1)
        try:
            outcomes = batcher.handle_batch(bodies)
        finally:
            self._steps.stop(-1)
        if len(outcomes) != len(bodies):
            raise RuntimeError(f"handle_batch returned {len(outcomes)} outcomes "
                               f"for {len(bodies)} requests")
        return outcomes

    # ---- stream batching ----------------------------------------------------------

    def _other_streams_queued(self, batcher: StreamBatchHandler,
                              first: StreamPush | StreamFinish) -> list[StreamPush | StreamFinish]:
        """Queued pushes/finishes of up to max_stream_batch - 1 other streams, each the first
        queued message of its stream (so no stream's messages change order)."""
        while True:
            try:
                self._backlog.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        taken: list[StreamPush | StreamFinish] = []
        kept: deque[_Queued | Shutdown] = deque()
        seen = {first.stream_id}  # streams with an earlier message: the rest of theirs waits
        stop = False
        for message in self._backlog:
            stop = stop or isinstance(message, Shutdown)
            sid = getattr(message, "stream_id", None)
            if (not stop and isinstance(message, (StreamPush, StreamFinish)) and sid not in seen
                    and len(taken) < batcher.max_stream_batch - 1):
                taken.append(message)
            else:
                kept.append(message)
            if sid is not None:
                seen.add(sid)
        self._backlog = kept
        return taken

    def _serve_stream_batch(self, batcher: StreamBatchHandler,
                            messages: list[StreamPush | StreamFinish]) -> None:
        """One `step_streams` call for messages of different streams; each gets its answer."""
        calls: list[tuple[StreamPush | StreamFinish, StreamCall]] = []
        finished: list[Any] = []
        for i, message in enumerate(messages):
            if i and self._take_cancelled(message.request_id):  # the first was checked by _serve
                continue
            if message.stream_id not in self._streams:
                self._fail(message.request_id, BadRequest(
                    f"no open stream {message.stream_id} (finished, closed or never opened)"))
                continue
            state = self._streams[message.stream_id]
            if isinstance(message, StreamFinish):
                del self._streams[message.stream_id]
                finished.append(state)
            calls.append((message, StreamCall(state, message.body if isinstance(message, StreamPush)
                                              else None)))
        try:
            outcomes: list[list[Any] | Exception] = (
                list(self._stream_outcomes(batcher, [call for _, call in calls])) if calls else [])
        except Exception as exc:
            logger.exception("a batch of %d stream calls failed", len(calls))
            outcomes = [exc] * len(calls)
        finally:
            for state in finished:
                try:
                    self._stream_handler().close(state)
                except Exception:
                    logger.exception("closing a finished stream failed")
        for (message, _), outcome in zip(calls, outcomes, strict=True):
            if isinstance(outcome, Exception):
                self._send(failure(message.request_id, outcome))
                continue
            for result in outcome:
                self._send(Result(message.request_id, result))
            self._send(Done(message.request_id))
        for message in messages:
            self._cancelled.discard(message.request_id)

    def _stream_outcomes(self, batcher: StreamBatchHandler,
                         calls: list[StreamCall]) -> list[list[Any] | ServingError]:
        self._steps.start(-1)
        try:
            outcomes = batcher.step_streams(calls)
        finally:
            self._steps.stop(-1)
        if len(outcomes) != len(calls):
            raise RuntimeError(f"step_streams returned {len(outcomes)} outcomes for {len(calls)} calls")
        return outcomes

    # ---- streams ------------------------------------------------------------------

    def _stream_handler(self) -> StreamHandler:
        if not isinstance(self._handler, StreamHandler):
            raise BadRequest("this worker serves no streams")
        return self._handler

    def _stream(self, stream_id: int) -> Any:
        if stream_id not in self._streams:
            raise BadRequest(f"no open stream {stream_id} (finished, closed or never opened)")
        return self._streams[stream_id]

    def _open_stream(self, message: OpenStream) -> None:
        handler = self._stream_handler()
        if message.stream_id in self._streams:
            raise BadRequest(f"stream {message.stream_id} is already open")
        if len(self._streams) >= self._max_streams:
            raise EngineBusy(f"too many open streams ({self._max_streams})")
        self._steps.start(message.request_id)
        try:
            self._streams[message.stream_id] = handler.open_stream(message.body)
        finally:
            self._steps.stop(message.request_id)
        self._send(Done(message.request_id))

    def _push(self, message: StreamPush) -> None:
        handler = self._stream_handler()
        state, body = self._stream(message.stream_id), message.body
        self._run(message.request_id, lambda: handler.push(state, body))

    def _finish_stream(self, message: StreamFinish) -> None:
        handler = self._stream_handler()
        state = self._stream(message.stream_id)
        del self._streams[message.stream_id]
        try:
            self._run(message.request_id, lambda: handler.finish(state))
        finally:
            handler.close(state)

    def _close_stream(self, stream_id: int) -> None:
        state = self._streams.pop(stream_id, None)
        if state is not None:
            self._stream_handler().close(state)


class _StepClock:
    """When each running handler step began (several with a concurrent handler), so a pong
    can report the oldest: the parent kills a worker whose step runs too long."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started: dict[int, float] = {}

    def start(self, key: int) -> None:
        with self._lock:
            self._started[key] = time.monotonic()

    def stop(self, key: int) -> None:
        with self._lock:
            self._started.pop(key, None)

    def keys(self) -> list[int]:
        with self._lock:
            return list(self._started)

    def oldest_age(self) -> float | None:
        with self._lock:
            oldest = min(self._started.values(), default=None)
        return None if oldest is None else time.monotonic() - oldest
