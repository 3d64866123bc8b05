"""A service's life: loading its engines, serving, draining on SIGTERM, stopped.

The port is bound and /health answers from the first second; engines load in the
background (status "loading", HTTP 503) and a failure to load is fatal ("failed", the
process exits non-zero). SIGTERM starts a drain: nothing new is admitted (503 / close 1013),
in-flight turns and requests finish up to --drain-timeout, then sockets close with 1001 and
the workers stop. A second SIGTERM, or SIGINT, skips what is left of the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import signal
import socket
import ssl
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

from web_demo.server.errors import Draining, EngineBusy, EngineDead, ServingError

logger = logging.getLogger(__name__)


class Phase(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


class Lifecycle:
    """Phase of the service and a count of the work in flight (HTTP requests, replies)."""

    def __init__(self) -> None:
        self.phase = Phase.LOADING
        self.failure: str | None = None
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.stop_requested = asyncio.Event()  # main() waits on it; a fatal failure sets it
        self.started = asyncio.Event()  # set once loading ends, ready or failed

    def refusal(self) -> ServingError | None:
        """Why new work cannot start now, or None when it can."""
        if self.phase is Phase.LOADING:
            return EngineBusy("the server is still loading its models; try again shortly",
                              retryable=True)
        if self.phase is Phase.DRAINING:
            return Draining("the server is shutting down; reconnect to another instance")
        if self.phase is Phase.FAILED:
            return EngineDead(f"the server failed to start: {self.failure}")
        return None

    def begin_work(self) -> None:
        """One more unit of in-flight work (an HTTP request, a reply) that a drain waits for."""
        self._busy += 1
        self._idle.clear()

    def end_work(self) -> None:
        self._busy -= 1
        if self._busy == 0:
            self._idle.set()

    @contextlib.contextmanager
    def work(self) -> Iterator[None]:
        self.begin_work()
        try:
            yield
        finally:
            self.end_work()

    @property
    def busy(self) -> int:
        return self._busy

    def ready(self) -> None:
        if self.phase is Phase.LOADING:
            self.phase = Phase.READY
        self.started.set()

    def fail(self, reason: str) -> None:
        self.phase, self.failure = Phase.FAILED, reason
        self.started.set()
        self.stop_requested.set()

    async def drain(self, timeout_s: float) -> bool:
        """Stops admitting and waits for in-flight work; True when it all finished in time."""
        if self.phase is Phase.READY:
            self.phase = Phase.DRAINING
        logger.warning("draining: %d in flight, waiting up to %.0f s", self._busy, timeout_s)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            logger.warning("drain timeout: %d still in flight; closing them", self._busy)
            return False
        return True


def bind(host: str, port: int) -> socket.socket:
    """Binds before any model loads, so a taken port fails in a second, not after minutes."""
    sock = socket.create_server((host, port), reuse_port=False)
    sock.set_inheritable(False)
    return sock


def tls_context(certfile: Path | None, keyfile: Path | None) -> ssl.SSLContext | None:
    """The server's TLS context, or None for plain HTTP; a bad file raises ValueError at start."""
    if certfile is None or keyfile is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the TLS certificate {certfile} / key {keyfile}: {exc}") from exc
    return context


async def serve(app: web.Application, sock: socket.socket, *, lifecycle: Lifecycle,
                drain_timeout_s: float, ssl_context: ssl.SSLContext | None = None) -> int:
    """Runs the app on a bound socket until a signal; returns the process exit code."""
    # handler_cancellation: a client that hangs up cancels its handler, so the engine work it
    # waits on (a queued worker request, remaining long-audio chunks) is dropped, not finished
    # for nobody. aiohttp's TestServer does the same, so in-process tests see this behaviour.
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5.0,
                           handler_cancellation=True)
    await runner.setup()
    await web.SockSite(runner, sock, ssl_context=ssl_context).start()
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()

    def on_sigterm() -> None:
        if lifecycle.stop_requested.is_set():
            interrupted.set()  # a second SIGTERM: stop waiting for the drain
        lifecycle.stop_requested.set()

    def on_sigint() -> None:  # Ctrl-C: stop now, without the drain
        interrupted.set()
        lifecycle.stop_requested.set()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        await lifecycle.stop_requested.wait()
        if lifecycle.phase is not Phase.FAILED and not interrupted.is_set():
            await _first_of(lifecycle.drain(drain_timeout_s), interrupted.wait())
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()  # closes sockets (1001), then stops engines and workers
    return 1 if lifecycle.phase is Phase.FAILED else 0


async def _first_of(*aws: Coroutine[Any, Any, Any]) -> None:
    """Runs the coroutines until one finishes, then cancels and awaits the others."""
    tasks = [asyncio.create_task(aw) for aw in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
