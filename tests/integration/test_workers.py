"""The worker runtime with real spawned subprocesses (handlers from tests/fakes.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from web_demo.server.config import WorkerConfig
from web_demo.server.errors import EngineError, WorkerDied
from web_demo.server.workers.supervisor import WorkerStartError, WorkerSupervisor

FAST = WorkerConfig(ready_timeout_s=30, close_timeout_s=1.0, restart_backoff_s=(0.1, 0.2))
pytestmark = pytest.mark.slow


def echo_worker(cfg: WorkerConfig = FAST, **init) -> WorkerSupervisor:
    return WorkerSupervisor(name="echo", handler="tests.fakes:EchoHandler", init_kwargs=init, cfg=cfg)


async def wait_until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_requests_stream_chunks_matched_by_id() -> None:
    worker = echo_worker()
    await worker.start()
    try:
        results = await asyncio.gather(*(worker.call("echo", {"value": i, "times": 3})
                                         for i in range(10)))
        assert results == [[i] * 3 for i in range(10)]
        assert worker.health()["alive"] and worker.health()["model"] == "echo"
    finally:
        await worker.aclose()
    assert not worker.alive


async def test_handler_error_fails_only_that_request() -> None:
    worker = echo_worker()
    await worker.start()
    try:
        with pytest.raises(EngineError, match="bad input on purpose"):
            await worker.call("fail", {})
        assert await worker.call("echo", {"value": "ok"}) == ["ok"]
    finally:
        await worker.aclose()


async def test_slow_initialisation_is_waited_for() -> None:
    worker = echo_worker(init_delay_s=1.5)
    started = time.monotonic()
    await worker.start()
    try:
        assert time.monotonic() - started >= 1.5
        assert await worker.call("echo", {"value": 1}) == [1]
    finally:
        await worker.aclose()


async def test_initialisation_timeout_is_an_error() -> None:
    worker = echo_worker(WorkerConfig(ready_timeout_s=0.5, close_timeout_s=0.5), init_delay_s=10)
    with pytest.raises(WorkerStartError, match="not ready after 0.5 s"):
        await worker.start()
    assert worker.pid is not None and not _running(worker.pid)


async def test_failed_initialisation_reports_the_cause() -> None:
    worker = echo_worker(fail_init=True)
    with pytest.raises(WorkerStartError, match="init failed on purpose"):
        await worker.start()


async def test_hanging_shutdown_is_killed() -> None:
    worker = echo_worker(ignore_shutdown=True)
    await worker.start()
    pid = worker.pid
    stream = worker.stream("hang", {})
    hang = asyncio.create_task(anext(stream, None))
    await asyncio.sleep(0.3)  # the child is now stuck inside the handler
    started = time.monotonic()
    await worker.aclose()
    assert time.monotonic() - started < 3 * FAST.close_timeout_s + 2
    assert not _running(pid)
    with pytest.raises(Exception):
        await hang


async def test_sigkill_fails_in_flight_and_restarts() -> None:
    worker = echo_worker()
    await worker.start()
    try:
        first_pid = worker.pid
        in_flight = asyncio.create_task(worker.call("sleep", {"seconds": 0.2, "chunks": 50}))
        await asyncio.sleep(0.3)
        os.kill(first_pid, signal.SIGKILL)
        with pytest.raises(WorkerDied, match="died"):
            await asyncio.wait_for(in_flight, 5)
        await wait_until(lambda: worker.alive)
        assert worker.pid != first_pid and worker.health()["restarts"] == 1
        assert await worker.call("echo", {"value": "back"}) == ["back"]
    finally:
        await worker.aclose()


async def test_cancelling_a_stream_cancels_it_in_the_child() -> None:
    worker = echo_worker()
    await worker.start()
    try:
        task = asyncio.create_task(worker.call("sleep", {"seconds": 0.1, "chunks": 100}))
        await asyncio.sleep(0.3)
        task.cancel()
        started = time.monotonic()
        # The child stops between chunks, so the next request is served within ~one chunk.
        assert await worker.call("echo", {"value": 7}) == [7]
        assert time.monotonic() - started < 1.0
    finally:
        await worker.aclose()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill(0); reap check via /proc
        with open(f"/proc/{pid}/status") as f:
            return "zombie" not in f.read()
    except FileNotFoundError:
        return False
