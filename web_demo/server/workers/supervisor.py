"""Runs one worker subprocess and keeps it running.

Lifecycle: start() spawns the child and waits for its Ready under a timeout; a watcher on
the process sentinel notices a dead child at once, fails every in-flight request with
WorkerDied and restarts it with backoff; aclose() asks the child to stop, waits, then kills.
Requests are streamed: `stream()` yields the child's chunks for one request id.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing as mp
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from web_demo.server.config import WorkerConfig
from web_demo.server.errors import EngineDead, EngineError, ServingError, WorkerDied
from web_demo.server.workers.ipc import (
    Cancel, Chunk, Done, Failed, InitFailed, Ready, Request, Shutdown, ToParent)
from web_demo.server.workers.process import worker_main

logger = logging.getLogger(__name__)

STABLE_AFTER_S = 30.0  # a worker up this long resets the restart backoff


class WorkerStartError(ServingError):
    """The child failed to initialise or did not become ready in time."""


@dataclass
class _Incarnation:
    """One running child process and its pipe."""
    process: BaseProcess
    conn: Connection
    ready: asyncio.Future[dict[str, Any]]
    started_at: float = field(default_factory=time.monotonic)


class WorkerSupervisor:
    """Owns one worker subprocess; shared by every session that uses that worker."""

    def __init__(self, *, name: str, handler: str, init_kwargs: dict[str, Any] | None = None,
                 cfg: WorkerConfig = WorkerConfig()) -> None:
        self.name = name
        self._handler = handler
        self._init_kwargs = init_kwargs or {}
        self._cfg = cfg
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Queue[ToParent | ServingError]] = {}
        self._proc: _Incarnation | None = None
        self._alive = False
        self._closing = False
        self._restarts = 0
        self._restart_task: asyncio.Task[None] | None = None
        self._info: dict[str, Any] = {}
        self._last_exit: str | None = None

    # ---- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        await self._spawn()

    async def aclose(self) -> None:
        self._closing = True
        if self._restart_task is not None:
            self._restart_task.cancel()
            await asyncio.gather(self._restart_task, return_exceptions=True)
        self._fail_pending(EngineDead(f"{self.name} worker is shutting down"))
        if self._proc is not None:
            await self._stop(self._proc)

    @property
    def alive(self) -> bool:
        return self._alive

    @property
    def pid(self) -> int | None:
        return self._proc.process.pid if self._proc is not None else None

    def health(self) -> dict[str, Any]:
        return {"alive": self._alive, "pid": self.pid, "restarts": self._restarts,
                "last_exit": self._last_exit, **self._info}

    async def _spawn(self) -> None:
        loop = asyncio.get_running_loop()
        ctx = mp.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe()
        process = ctx.Process(
            target=worker_main, name=f"worker-{self.name}", daemon=True,
            args=(child_conn, self._handler, self._init_kwargs, logging.getLogger().level))
        process.start()
        child_conn.close()
        proc = _Incarnation(process, parent_conn, loop.create_future())
        self._proc = proc
        threading.Thread(target=self._read_loop, args=(proc, loop), daemon=True,
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
        self._alive = True
        logger.info("%s worker ready (pid %d): %s", self.name, process.pid, self._info)

    async def _stop(self, proc: _Incarnation) -> None:
        """Asks politely, waits close_timeout, then terminates and finally kills."""
        self._alive = False
        if proc.process.is_alive():
            try:
                proc.conn.send(Shutdown())
            except OSError:
                pass  # the pipe is already gone; the kill below still applies
        for stop in (None, proc.process.terminate, proc.process.kill):
            if stop is not None:
                logger.warning("%s worker did not stop in time; %s", self.name, stop.__name__)
                stop()
            await asyncio.to_thread(proc.process.join, self._cfg.close_timeout_s)
            if not proc.process.is_alive():
                break
        self._forget(proc)

    def _forget(self, proc: _Incarnation) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(proc.process.sentinel)
        proc.conn.close()
        if not proc.ready.done():
            proc.ready.set_exception(WorkerStartError(f"{self.name} worker exited during start"))

    def _on_exit(self, proc: _Incarnation) -> None:
        """Sentinel callback: the child exited, whatever the reason."""
        proc.process.join(0)
        code = proc.process.exitcode
        self._last_exit = f"exit code {code}"
        self._forget(proc)
        if proc is not self._proc or self._closing:
            return
        was_alive, self._alive = self._alive, False
        logger.error("%s worker (pid %s) died with exit code %s", self.name, proc.process.pid, code)
        self._fail_pending(WorkerDied(f"{self.name} worker died (exit code {code}); restarting"))
        if was_alive:
            backoff_index = 0 if time.monotonic() - proc.started_at > STABLE_AFTER_S else self._restarts
            self._restart_task = asyncio.create_task(self._restart(backoff_index),
                                                     name=f"restart-{self.name}")

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

    def _read_loop(self, proc: _Incarnation, loop: asyncio.AbstractEventLoop) -> None:
        """Runs in a thread: hands every message from the child to the event loop."""
        try:
            while True:
                message = proc.conn.recv()
                loop.call_soon_threadsafe(self._dispatch, proc, message)
        except (EOFError, OSError):
            return  # the sentinel callback handles the exit
        except RuntimeError:
            return  # the event loop closed first (interpreter shutdown)

    def _dispatch(self, proc: _Incarnation, message: ToParent) -> None:
        if isinstance(message, Ready):
            if not proc.ready.done():
                proc.ready.set_result(message.info)
        elif isinstance(message, InitFailed):
            if not proc.ready.done():
                proc.ready.set_exception(WorkerStartError(f"{self.name} worker: {message.error}"))
        elif isinstance(message, (Chunk, Done, Failed)):
            queue = (self._pending.pop(message.request_id, None) if isinstance(message, (Done, Failed))
                     else self._pending.get(message.request_id))
            if queue is not None:
                queue.put_nowait(message)

    def _fail_pending(self, error: ServingError) -> None:
        pending, self._pending = self._pending, {}
        for queue in pending.values():
            queue.put_nowait(error)

    # ---- requests ---------------------------------------------------------------------

    async def stream(self, method: str, payload: Any) -> AsyncIterator[Any]:
        """Yields the chunks of one request; cancelling the iteration cancels it in the child."""
        proc = self._proc
        if self._closing:
            raise EngineDead(f"{self.name} worker is shutting down")
        if not self._alive or proc is None:
            raise WorkerDied(f"{self.name} worker is restarting; try again shortly")
        rid = next(self._ids)
        queue: asyncio.Queue[ToParent | ServingError] = asyncio.Queue()
        self._pending[rid] = queue
        try:
            proc.conn.send(Request(rid, method, payload))
            while True:
                item = await queue.get()
                if isinstance(item, Chunk):
                    yield item.payload
                elif isinstance(item, Done):
                    return
                elif isinstance(item, Failed):
                    raise EngineError(f"{self.name} worker: {item.error}", retryable=item.retryable)
                else:
                    raise item
        finally:
            if self._pending.pop(rid, None) is not None and self._alive:
                proc.conn.send(Cancel(rid))

    async def call(self, method: str, payload: Any) -> list[Any]:
        """Runs one request to completion and returns all its chunks."""
        return [chunk async for chunk in self.stream(method, payload)]
