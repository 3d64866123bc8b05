"""The worker runtime with real spawned subprocesses (handlers from tests/fakes.py).

Liveness (hangs, heartbeats, loop lag), batching, streams and pools have their own
test_worker_*.py modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import replace

import pytest

from tests.fakes import FAST, BatchSizes, Crash, Echo, Hang, Reject, Sleep, wait_until
from web_demo.server.config import WorkerConfig
from web_demo.server.errors import BadRequest, EngineBusy, EngineDead, EngineError, RequestTimeout, WorkerDied
from web_demo.server.workers.supervisor import WorkerStartError, WorkerSupervisor

pytestmark = pytest.mark.slow


def echo_worker(cfg: WorkerConfig = FAST, **init: object) -> WorkerSupervisor:
    return WorkerSupervisor(name="echo", handler="tests.fakes:EchoHandler", init_kwargs=init, cfg=cfg)


async def test_typed_requests_stream_results_matched_by_id() -> None:
    worker = echo_worker()
    await worker.start()
    try:
        results = await asyncio.gather(*(worker.call(Echo((i, "x"), times=3)) for i in range(10)))
        assert results == [[(i, "x")] * 3 for i in range(10)]
        health = worker.health()
        assert health["alive"] and health["model"] == "echo" and health["pending"] == 0
        assert health["pid"] == worker.pid and health["last_exit"] is None
    finally:
        await worker.aclose()
    assert not worker.alive
    assert worker.health()["last_exit"] == "exit code 0"  # stopped politely


async def test_bad_request_crosses_as_bad_request_with_its_param() -> None:
    worker = echo_worker()
    await worker.start()
    try:
        with pytest.raises(BadRequest, match="bad input on purpose") as info:
            await worker.call(Reject(param="voice"))
        assert info.value.param == "voice" and info.value.http_status == 400
        with pytest.raises(BadRequest, match="does not serve BatchSizes"):
            await worker.call(BatchSizes())  # a request type the handler does not know
        assert await worker.call(Echo("ok")) == ["ok"]
    finally:
        await worker.aclose()


async def test_unexpected_exception_is_an_engine_error_naming_it() -> None:
    worker = echo_worker()
    await worker.start()
    try:
        with pytest.raises(EngineError, match="ValueError: crashed on purpose") as info:
            await worker.call(Crash())
        assert type(info.value) is EngineError and not info.value.retryable
        assert await worker.call(Echo("ok")) == ["ok"]
    finally:
        await worker.aclose()


async def test_unpicklable_request_fails_only_itself() -> None:
    worker = echo_worker()
    await worker.start()
    try:
        with pytest.raises(EngineError, match="cannot send the request"):
            await worker.call(Echo(lambda: None))
        assert await worker.call(Echo("ok")) == ["ok"]
    finally:
        await worker.aclose()


async def test_deadline_is_a_request_timeout_and_cancels_in_the_child() -> None:
    worker = echo_worker()
    await worker.start()
    try:
        started = time.monotonic()
        with pytest.raises(RequestTimeout, match=r"no result within 0\.5 s"):
            await worker.call(Sleep(seconds=1.0, chunks=100), timeout_s=0.5)
        assert 0.5 <= time.monotonic() - started < 1.0
        # The child dropped the request after its current step (<= 1 s), not after 100 s.
        started = time.monotonic()
        assert await worker.call(Echo("next")) == ["next"]
        assert time.monotonic() - started < 1.5
    finally:
        await worker.aclose()


async def test_max_pending_is_engine_busy_at_once() -> None:
    worker = echo_worker(replace(FAST, max_pending=2))
    await worker.start()
    try:
        busy = [asyncio.create_task(worker.call(Sleep(seconds=0.3, chunks=1))) for _ in range(2)]
        await wait_until(lambda: worker.pending == 2)
        started = time.monotonic()
        with pytest.raises(EngineBusy, match="2 requests pending") as info:
            await worker.call(Echo("one too many"))
        assert time.monotonic() - started < 0.05 and info.value.retryable
        assert await asyncio.gather(*busy) == [[0], [0]]
        assert await worker.call(Echo("room again")) == ["room again"]
    finally:
        await worker.aclose()


async def test_slow_initialisation_is_waited_for() -> None:
    worker = echo_worker(init_delay_s=1.5)
    started = time.monotonic()
    await worker.start()
    try:
        assert time.monotonic() - started >= 1.5
        assert await worker.call(Echo(1)) == [1]
    finally:
        await worker.aclose()


async def test_initialisation_timeout_is_an_error() -> None:
    worker = echo_worker(replace(FAST, ready_timeout_s=0.5, close_timeout_s=0.5), init_delay_s=10)
    with pytest.raises(WorkerStartError, match=r"not ready after 0\.5 s"):
        await worker.start()
    assert worker.pid is not None and not _running(worker.pid)


async def test_failed_initialisation_reports_the_cause() -> None:
    worker = echo_worker(fail_init=True)
    with pytest.raises(WorkerStartError, match="init failed on purpose"):
        await worker.start()


async def test_requests_before_start_and_after_close_are_engine_dead() -> None:
    worker = echo_worker()
    with pytest.raises(EngineDead, match="not started"):
        await worker.call(Echo(1))
    await worker.start()
    await worker.aclose()
    with pytest.raises(EngineDead, match="shutting down"):
        await worker.call(Echo(1))


async def test_hanging_shutdown_is_killed() -> None:
    worker = echo_worker(ignore_shutdown=True)
    await worker.start()
    pid = worker.pid
    assert pid is not None
    hang = asyncio.create_task(worker.call(Hang()))
    await asyncio.sleep(0.3)  # the child is now stuck inside the handler
    started = time.monotonic()
    await worker.aclose()
    assert time.monotonic() - started < 3 * FAST.close_timeout_s + 2
    assert not _running(pid)
    assert worker.health()["last_exit"] == "killed by SIGKILL"
    with pytest.raises(EngineDead):
        await hang


async def test_sigkill_fails_in_flight_and_restarts() -> None:
    worker = echo_worker()
    await worker.start()
    try:
        first_pid = worker.pid
        assert first_pid is not None
        in_flight = asyncio.create_task(worker.call(Sleep(seconds=0.2, chunks=50)))
        await asyncio.sleep(0.3)
        os.kill(first_pid, signal.SIGKILL)
        with pytest.raises(WorkerDied, match=r"died \(killed by SIGKILL\); restarting"):
            await asyncio.wait_for(in_flight, 5)
        await wait_until(lambda: worker.alive)
        health = worker.health()
        assert worker.pid != first_pid and health["restarts"] == 1
        assert health["last_exit"] == "killed by SIGKILL"  # never "exit code None"
        assert await worker.call(Echo("back")) == ["back"]
    finally:
        await worker.aclose()


async def test_request_during_a_restart_waits_for_it() -> None:
    worker = echo_worker()
    await worker.start()
    try:
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)
        await wait_until(lambda: not worker.alive)
        # A bystander with nothing in flight is served by the new child, not failed.
        assert await worker.call(Echo("bystander")) == ["bystander"]
        assert worker.health()["restarts"] == 1
    finally:
        await worker.aclose()


async def test_request_during_a_restart_gives_up_after_restart_wait() -> None:
    worker = echo_worker(replace(FAST, restart_backoff_s=(5.0,), restart_wait_s=0.3))
    await worker.start()
    try:
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)
        await wait_until(lambda: not worker.alive)
        started = time.monotonic()
        with pytest.raises(WorkerDied, match="restarting"):
            await worker.call(Echo("too late"))
        assert 0.3 <= time.monotonic() - started < 1.0
    finally:
        await worker.aclose()


async def test_cancelling_a_stream_cancels_it_in_the_child() -> None:
    worker = echo_worker()
    await worker.start()
    try:
        task = asyncio.create_task(worker.call(Sleep(seconds=0.1, chunks=100)))
        await asyncio.sleep(0.3)
        task.cancel()
        started = time.monotonic()
        # The child stops between steps, so the next request is served within ~one step.
        assert await worker.call(Echo(7)) == [7]
        assert time.monotonic() - started < 1.0
        async with contextlib.aclosing(worker.stream(Sleep(seconds=0.1, chunks=100))) as results:
            assert await anext(results) == 0  # leaving the block closes the stream
        started = time.monotonic()
        assert await worker.call(Echo(8)) == [8]
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
