"""Runs one worker subprocess and keeps it running.

Lifecycle: start() spawns the child and waits for its Ready under a timeout; a watcher on
the process sentinel notices a dead child at once, fails every in-flight request with
WorkerDied and restarts it with backoff; aclose() asks the child to stop, waits, then kills.

Liveness: each request has a deadline (no result within it -> RequestTimeout, cancelled in
the child); the parent pings the child, whose reader thread answers with how long the
current handler step has run, so a frozen child (no answer) or a stuck handler (one step
too long) is killed and restarted. At most `max_pending` requests are admitted; requests
that arrive during a restart wait for it (up to `restart_wait_s`).

The event loop never touches the pipe: a writer thread pickles and writes, a reader thread
reads and unpickles, and both hand over through queues and call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing as mp
import queue
import signal
import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from typing import Any

from web_demo.server.config import WorkerConfig
from web_demo.server.errors import (
    EngineBusy,
    EngineDead,
    EngineError,
    RequestTimeout,
    ServingError,
    WorkerDied,
)
from web_demo.server.workers.ipc import (
    Cancel,
    CloseStream,
    Done,
    Failed,
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
    ToChild,
    ToParent,
)
from web_demo.server.workers.process import worker_main

logger = logging.getLogger(__name__)

STABLE_AFTER_S = 30.0  # a worker up this long resets the restart backoff
REAP_TIMEOUT_S = 5.0  # the sentinel can fire before the exit status can be collected

_Reply = Result | Done | Failed | ServingError  # what one request's queue receives


class WorkerStartError(ServingError):
    """The child failed to initialise or did not become ready in time."""


@dataclass(eq=False)
class _Incarnation:
    """One running child process, its pipe and the threads that use it."""
    process: BaseProcess
    conn: Connection
    ready: asyncio.Future[dict[str, Any]]
    outbox: queue.SimpleQueue[ToChild | None] = field(default_factory=queue.SimpleQueue)
    started_at: float = field(default_factory=time.monotonic)
    last_pong_at: float = field(default_factory=time.monotonic)  # set by the reader thread
    hung: str | None = None  # why the supervisor killed it as hung
    heartbeat: asyncio.Task[None] | None = None

    def send(self, message: ToChild) -> None:
        self.outbox.put(message)  # the writer thread pickles and writes it


class WorkerSupervisor:
    """Owns one worker subprocess; shared by every session that uses that worker."""

    def __init__(self, *, name: str, handler: str, init_kwargs: dict[str, Any] | None = None,
                 cfg: WorkerConfig = WorkerConfig()) -> None:
        self.name = name
        self._handler = handler
        self._init_kwargs = init_kwargs or {}
        self._cfg = cfg
        self._ids = itertools.count(1)
        self._stream_ids = itertools.count(1)
        self._pending: dict[int, asyncio.Queue[_Reply]] = {}  # sent to the current child
        self._waiting = 0  # admitted requests waiting for a restart
        self._proc: _Incarnation | None = None
        self._alive = False
        self._up = asyncio.Event()  # set while alive, and on close to wake the waiters
        self._started = False
        self._closing = False
        self._restarts = 0
        self._recovery: asyncio.Task[None] | None = None
        self._info: dict[str, Any] = {}
        self._last_exit: str | None = None

    # ---- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        self._started = True
        await self._spawn()

    async def aclose(self) -> None:
        self._closing = True
        self._up.set()
        if self._recovery is not None:
            await _cancel_and_wait(self._recovery)
        self._fail_pending(EngineDead(f"{self.name} worker is shutting down"))
        if self._proc is not None:
            await self._stop(self._proc)

    @property
    def alive(self) -> bool:
        return self._alive

    @property
    def pid(self) -> int | None:
        return self._proc.process.pid if self._proc is not None else None

    @property
    def pending(self) -> int:
        """Requests admitted and not finished, those waiting for a restart included."""
        return len(self._pending) + self._waiting

    def health(self) -> dict[str, Any]:
        return {**self._info, "alive": self._alive, "pid": self.pid, "restarts": self._restarts,
                "pending": self.pending, "last_exit": self._last_exit}

    async def _spawn(self) -> None:
        loop = asyncio.get_running_loop()
        ctx = mp.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe()
        process = ctx.Process(
            target=worker_main, name=f"worker-{self.name}", daemon=True,
            args=(child_conn, self._handler, self._init_kwargs, logging.getLogger().level))
        await asyncio.to_thread(process.start)  # forks a possibly large parent
        child_conn.close()
        proc = _Incarnation(process, parent_conn, loop.create_future())
        self._proc = proc
        writer = threading.Thread(target=self._write_loop, args=(proc, loop), daemon=True,
                                  name=f"worker-{self.name}-writer")
        writer.start()
        threading.Thread(target=self._read_loop, args=(proc, loop, writer), daemon=True,
                         name=f"worker-{self.name}-reader").start()
        loop.add_reader(process.sentinel, self._on_exit, proc)
        try:
            self._info = await asyncio.wait_for(proc.ready, self._cfg.ready_timeout_s)
        except TimeoutError:
            await self._stop(proc)
            raise WorkerStartError(
                f"{self.name} worker not ready after {self._cfg.ready_timeout_s:g} s") from None
        except WorkerStartError:
            await self._stop(proc)
            raise
        proc.last_pong_at = time.monotonic()
        proc.heartbeat = asyncio.create_task(self._heartbeat(proc), name=f"heartbeat-{self.name}")
        self._alive = True
        self._up.set()
        logger.info("%s worker ready (pid %d): %s", self.name, process.pid, self._info)

    async def _stop(self, proc: _Incarnation) -> None:
        """Asks politely, waits close_timeout, then terminates and finally kills."""
        if proc is self._proc:
            self._alive = False
        if proc.heartbeat is not None:
            await _cancel_and_wait(proc.heartbeat)
        if proc.process.is_alive():
            proc.send(Shutdown())
        for stop in (None, proc.process.terminate, proc.process.kill):
            if stop is not None:
                logger.warning("%s worker did not stop in time; %s", self.name, stop.__name__)
                stop()
            await asyncio.to_thread(proc.process.join, self._cfg.close_timeout_s)
            if not proc.process.is_alive():
                break
        asyncio.get_running_loop().remove_reader(proc.process.sentinel)
        self._last_exit = _describe_exit(proc)
        if not proc.ready.done():
            proc.ready.set_exception(WorkerStartError(f"{self.name} worker exited during start"))

    def _on_exit(self, proc: _Incarnation) -> None:
        """Sentinel callback: the child exited, whatever the reason."""
        asyncio.get_running_loop().remove_reader(proc.process.sentinel)
        if proc.heartbeat is not None:
            proc.heartbeat.cancel()
        if not proc.ready.done():
            proc.ready.set_exception(WorkerStartError(f"{self.name} worker exited during start"))
        if proc is not self._proc or self._closing or not self._alive:
            return  # a stop or a failed start in progress handles it
        self._alive = False
        self._up.clear()
        self._recovery = asyncio.create_task(self._recover(proc), name=f"recover-{self.name}")

    async def _recover(self, proc: _Incarnation) -> None:
        """Fails what the dead child had in flight, then restarts it."""
        if proc.heartbeat is not None:
            await _cancel_and_wait(proc.heartbeat)
        await asyncio.to_thread(proc.process.join, REAP_TIMEOUT_S)
        self._last_exit = _describe_exit(proc)
        if proc.hung is not None:
            error = WorkerDied(f"{self.name} worker hung ({proc.hung}) and was restarted; "
                               "retry the request")
        else:
            error = WorkerDied(f"{self.name} worker died ({self._last_exit}); restarting, "
                               "retry the request")
        logger.error("%s worker (pid %s): %s", self.name, proc.process.pid, self._last_exit)
        self._fail_pending(error)
        stable = time.monotonic() - proc.started_at > STABLE_AFTER_S
        await self._restart(0 if stable else self._restarts)

    async def _restart(self, backoff_index: int) -> None:
        backoffs = self._cfg.restart_backoff_s
        for attempt in itertools.count(backoff_index):
            await asyncio.sleep(backoffs[min(attempt, len(backoffs) - 1)])
            self._restarts += 1
            try:
                await self._spawn()
                return
            except WorkerStartError as exc:
                logger.error("%s worker restart failed: %s", self.name, exc)

    # ---- liveness -----------------------------------------------------------------------

    async def _heartbeat(self, proc: _Incarnation) -> None:
        for seq in itertools.count():
            await asyncio.sleep(self._cfg.heartbeat_interval_s)
            silent_s = time.monotonic() - proc.last_pong_at
            if silent_s > self._cfg.heartbeat_timeout_s:
                self._kill_hung(proc, f"no heartbeat answer for {silent_s:.1f} s")
                return
            proc.send(Ping(seq))

    def _check_step(self, proc: _Incarnation, pong: Pong) -> None:
        if pong.step_s is not None and pong.step_s > self._cfg.hang_timeout_s:
            self._kill_hung(proc, f"one handler step has run {pong.step_s:.1f} s")

    def _kill_hung(self, proc: _Incarnation, why: str) -> None:
        if proc.hung is not None or proc is not self._proc or self._closing:
            return
        proc.hung = why
        logger.error("%s worker (pid %s) hung: %s; killing it", self.name, proc.process.pid, why)
        proc.process.kill()  # SIGKILL also ends a stopped process; the sentinel does the rest

    # ---- pipe threads -------------------------------------------------------------------

    def _write_loop(self, proc: _Incarnation, loop: asyncio.AbstractEventLoop) -> None:
        """Runs in a thread: pickling a large request never blocks the event loop."""
        while (message := proc.outbox.get()) is not None:
            try:
                data = ForkingPickler.dumps(message)
            except Exception as exc:  # an unpicklable request fails only itself
                if not _call_soon(loop, self._unsendable, message, exc):
                    return
                continue
            try:
                proc.conn.send_bytes(data)
            except OSError:
                return  # the child is gone; the sentinel callback handles it

    def _read_loop(self, proc: _Incarnation, loop: asyncio.AbstractEventLoop,
                   writer: threading.Thread) -> None:
        """Runs in a thread: hands every message from the child to the event loop.

        It owns the connection's end: once the child is gone it stops the writer and closes it.
        """
        try:
            while True:
                message = self._receive(proc)
                if isinstance(message, Pong):
                    proc.last_pong_at = time.monotonic()  # not delayed by a busy event loop
                if message is not None and not _call_soon(loop, self._dispatch, proc, message):
                    return
        except (EOFError, OSError):
            return  # the sentinel callback handles the exit
        finally:
            proc.outbox.put(None)
            writer.join()
            proc.conn.close()

    def _receive(self, proc: _Incarnation) -> ToParent | None:
        data = proc.conn.recv_bytes()
        try:
            message: ToParent = ForkingPickler.loads(data)
        except Exception:  # e.g. a result type the parent cannot import; its deadline fails it
            logger.exception("%s worker sent a message that cannot be unpickled", self.name)
            return None
        return message

    def _dispatch(self, proc: _Incarnation, message: ToParent) -> None:
        if isinstance(message, Ready):
            if not proc.ready.done():
                proc.ready.set_result(message.info)
        elif isinstance(message, InitFailed):
            if not proc.ready.done():
                proc.ready.set_exception(WorkerStartError(f"{self.name} worker: {message.error}"))
        elif isinstance(message, Pong):
            self._check_step(proc, message)
        elif isinstance(message, Result):
            replies = self._pending.get(message.request_id)
            if replies is not None:
                replies.put_nowait(message)
        else:
            replies = self._pending.pop(message.request_id, None)
            if replies is not None:
                replies.put_nowait(message)

    def _unsendable(self, message: ToChild, exc: Exception) -> None:
        replies = self._pending.pop(getattr(message, "request_id", -1), None)
        if replies is not None:
            replies.put_nowait(EngineError(
                f"{self.name} worker: cannot send the request: {type(exc).__name__}: {exc}"))
        else:
            logger.error("%s worker: cannot send %s: %s", self.name, type(message).__name__, exc)

    def _fail_pending(self, error: ServingError) -> None:
        pending, self._pending = self._pending, {}
        for replies in pending.values():
            replies.put_nowait(error)

    # ---- requests -----------------------------------------------------------------------

    def stream(self, request: object, *,
               timeout_s: float | None = None) -> AsyncGenerator[Any, None]:
        """Yields the results of one request; cancelling the iteration cancels it in the child.

        `timeout_s` (default: request_timeout_s) bounds the wait for each result.
        """
        return self._exchange(lambda rid: Request(rid, request), timeout_s)

    async def call(self, request: object, *, timeout_s: float | None = None) -> list[Any]:
        """Runs one request to completion and returns all its results."""
        return await self._collect(lambda rid: Request(rid, request), timeout_s)

    def open_stream(self, request: object, *, timeout_s: float | None = None) -> WorkerStream:
        """A stream of handler state in the child; opened on first use or `async with`."""
        return WorkerStream(self, request, next(self._stream_ids), timeout_s)

    async def _collect(self, make: Callable[[int], RequestMessage], timeout_s: float | None,
                       pinned: _Incarnation | None = None) -> list[Any]:
        async with contextlib.aclosing(self._exchange(make, timeout_s, pinned)) as results:
            return [result async for result in results]

    async def _exchange(self, make: Callable[[int], RequestMessage], timeout_s: float | None,
                        pinned: _Incarnation | None = None) -> AsyncGenerator[Any, None]:
        proc = self._pinned(pinned) if pinned is not None else await self._admit()
        rid = next(self._ids)
        replies: asyncio.Queue[_Reply] = asyncio.Queue()
        self._pending[rid] = replies
        proc.send(make(rid))
        deadline_s = self._cfg.request_timeout_s if timeout_s is None else timeout_s
        try:
            while True:
                reply = await self._next_reply(replies, deadline_s)
                if isinstance(reply, Result):
                    yield reply.result
                elif isinstance(reply, Done):
                    return
                elif isinstance(reply, Failed):
                    raise reply.error()
                else:
                    raise reply
        finally:
            if self._pending.pop(rid, None) is not None and proc is self._proc and self._alive:
                proc.send(Cancel(rid))

    async def _next_reply(self, replies: asyncio.Queue[_Reply], deadline_s: float) -> _Reply:
        try:
            async with asyncio.timeout(deadline_s):
                return await replies.get()
        except TimeoutError:
            raise RequestTimeout(f"{self.name} worker: no result within {deadline_s:g} s; "
                                 "the request was cancelled") from None

    def _check_capacity(self) -> None:
        if self._closing:
            raise EngineDead(f"{self.name} worker is shutting down")
        if not self._started:
            raise EngineDead(f"{self.name} worker is not started")
        if self.pending >= self._cfg.max_pending:
            raise EngineBusy(f"{self.name} worker has {self.pending} requests pending "
                             f"(max {self._cfg.max_pending})")

    async def _admit(self) -> _Incarnation:
        """The child to send a new request to, after a restart in progress if need be."""
        self._check_capacity()
        if not self._alive:
            await self._wait_for_restart()
        if self._proc is None:
            raise EngineDead(f"{self.name} worker is not started")
        return self._proc

    async def _wait_for_restart(self) -> None:
        self._waiting += 1
        try:
            async with asyncio.timeout(self._cfg.restart_wait_s):
                while not self._alive and not self._closing:
                    await self._up.wait()
        except TimeoutError:
            raise WorkerDied(f"{self.name} worker is restarting; try again shortly") from None
        finally:
            self._waiting -= 1
        if self._closing:
            raise EngineDead(f"{self.name} worker is shutting down")

    def _pinned(self, proc: _Incarnation) -> _Incarnation:
        """A stream's requests go to the child that holds its state, or fail."""
        self._check_capacity()
        if proc is not self._proc or not self._alive:
            raise WorkerDied(f"{self.name} worker restarted; the stream's state was lost")
        return proc

    def _close_stream(self, proc: _Incarnation, stream_id: int) -> None:
        if proc is self._proc and self._alive:
            proc.send(CloseStream(stream_id))


class WorkerStream:
    """One stream of handler state in a worker (e.g. one reply's vocoder stream).

    Owned by whoever opened it: push() requests in order, then finish() for the tail, and
    aclose() in every case (a no-op after finish), e.g. through `contextlib.aclosing` or
    `async with`. Its requests always go to the child that holds the state; if that child
    died, they fail with WorkerDied.
    """

    def __init__(self, worker: WorkerSupervisor, request: object, stream_id: int,
                 timeout_s: float | None) -> None:
        self._worker = worker
        self._request = request
        self.stream_id = stream_id
        self._timeout_s = timeout_s
        self._proc: _Incarnation | None = None  # the child holding the state, once opened
        self._close_in: _Incarnation | None = None  # where aclose() must drop it

    async def open(self) -> None:
        """Creates the state in the child; the first push() does it when not called."""
        await self._opened()

    async def push(self, request: object) -> list[Any]:
        proc = await self._opened()
        return await self._worker._collect(
            lambda rid: StreamPush(rid, self.stream_id, request), self._timeout_s, proc)

    async def finish(self) -> list[Any]:
        proc = await self._opened()
        results = await self._worker._collect(
            lambda rid: StreamFinish(rid, self.stream_id), self._timeout_s, proc)
        self._close_in = None  # the child dropped it after the tail
        return results

    async def aclose(self) -> None:
        if self._close_in is not None:
            self._worker._close_stream(self._close_in, self.stream_id)
            self._close_in = None

    async def __aenter__(self) -> WorkerStream:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _opened(self) -> _Incarnation:
        if self._proc is None:
            proc = await self._worker._admit()
            self._close_in = proc  # even if the open is cut short after the child got it
            await self._worker._collect(
                lambda rid: OpenStream(rid, self.stream_id, self._request), self._timeout_s, proc)
            self._proc = proc
        return self._proc


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., None],
               *args: Any) -> bool:
    """From a pipe thread; False once the event loop is closed (interpreter shutdown)."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        return False
    return True


def _describe_exit(proc: _Incarnation) -> str:
    code = proc.process.exitcode
    if code is None:
        status = "exit status not collected"
    elif code < 0:
        status = f"killed by {signal.Signals(-code).name}"
    else:
        status = f"exit code {code}"
    return f"hung ({proc.hung}); {status}" if proc.hung is not None else status


async def _cancel_and_wait(task: asyncio.Task[None]) -> None:
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # we are being cancelled ourselves, not just the task
