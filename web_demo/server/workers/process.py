"""The worker subprocess side: load one handler, then serve requests until told to stop.

The handler is named by an import path ("package.module:Class") and built inside the
child, so CUDA is only ever initialised there (spawn start method). The parent drives
shutdown; the child ignores SIGINT so Ctrl-C in a terminal does not kill it mid-request.
"""

from __future__ import annotations

import importlib
import logging
import queue
import signal
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any, Protocol

from web_demo.server.workers.ipc import (
    Cancel, Chunk, Done, Failed, InitFailed, Ready, Request, Shutdown, ToChild)

logger = logging.getLogger(__name__)


class WorkerHandler(Protocol):
    """What a worker serves. Built once per process with the supervisor's init kwargs."""

    def info(self) -> dict[str, Any]: ...

    def handle(self, method: str, payload: Any) -> Iterator[Any]:
        """Yields result chunks; raising fails only this request."""
        ...


def load_handler(path: str, init_kwargs: dict[str, Any]) -> WorkerHandler:
    module_name, _, attr = path.partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    return factory(**init_kwargs)  # type: ignore[no-any-return]


def worker_main(conn: Connection, handler_path: str, init_kwargs: dict[str, Any],
                log_level: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s [worker] %(name)s: %(message)s")
    try:
        handler = load_handler(handler_path, init_kwargs)
    except Exception as exc:
        logger.exception("worker init failed")
        conn.send(InitFailed(f"{type(exc).__name__}: {exc}"))
        return
    conn.send(Ready(handler.info()))
    inbox: queue.SimpleQueue[ToChild] = queue.SimpleQueue()
    cancelled: set[int] = set()
    threading.Thread(target=_read_loop, args=(conn, inbox, cancelled), daemon=True).start()
    while not isinstance(message := inbox.get(), Shutdown):
        if isinstance(message, Request):
            _serve(handler, message, conn, cancelled)


def _read_loop(conn: Connection, inbox: queue.SimpleQueue[ToChild], cancelled: set[int]) -> None:
    """Cancels take effect between chunks of the request being served, so read them here."""
    try:
        while True:
            message = conn.recv()
            if isinstance(message, Cancel):
                cancelled.add(message.request_id)
            else:
                inbox.put(message)
    except (EOFError, OSError):
        inbox.put(Shutdown())  # the parent is gone


def _serve(handler: WorkerHandler, request: Request, conn: Connection, cancelled: set[int]) -> None:
    rid = request.request_id
    if rid in cancelled:  # cancelled while still queued
        cancelled.discard(rid)
        return
    try:
        for chunk in handler.handle(request.method, request.payload):
            if rid in cancelled:
                return
            conn.send(Chunk(rid, chunk))
        conn.send(Done(rid))
    except Exception as exc:
        logger.exception("request %d (%s) failed", rid, request.method)
        conn.send(Failed(rid, f"{type(exc).__name__}: {exc}"))
    finally:
        cancelled.discard(rid)
