"""Supervisor liveness: stuck handlers, frozen children, and an event loop that never waits."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import replace

import numpy as np
import pytest

from tests.fakes import FAST, Blob, Echo, Sleep, Spin, wait_until
from web_demo.server.errors import WorkerDied
from web_demo.server.workers.supervisor import WorkerSupervisor

pytestmark = pytest.mark.slow
LIVENESS = replace(FAST, heartbeat_interval_s=0.2, heartbeat_timeout_s=1.0, hang_timeout_s=1.0)
SLACK_S = 0.5  # scheduling and the kill itself, on a loaded 2-core machine


def echo_worker() -> WorkerSupervisor:
    return WorkerSupervisor(name="echo", handler="tests.fakes:EchoHandler", cfg=LIVENESS)


async def test_stuck_handler_is_killed_and_restarted() -> None:
    worker = echo_worker()
    await worker.start()
    try:
        first_pid = worker.pid
        started = time.monotonic()
        with pytest.raises(WorkerDied, match=r"hung \(one handler step has run 1\.\d s\) "
                                             r"and was restarted") as info:
            await worker.call(Spin())  # pings are answered: only the step time gives it away
        detected_s = time.monotonic() - started
        assert info.value.retryable
        assert LIVENESS.hang_timeout_s <= detected_s
        assert detected_s < LIVENESS.hang_timeout_s + LIVENESS.heartbeat_interval_s + SLACK_S
        await wait_until(lambda: worker.alive)
        assert worker.pid != first_pid
        assert worker.health()["last_exit"].startswith("hung (one handler step")
        assert await worker.call(Echo("served by the new child")) == ["served by the new child"]
    finally:
        await worker.aclose()


async def test_long_step_that_yields_in_time_is_not_a_hang() -> None:
    worker = echo_worker()
    await worker.start()
    try:
        # 3 s in all, but each step is 0.6 s: the hang timer restarts at every result.
        assert await worker.call(Sleep(seconds=0.6, chunks=5)) == [0, 1, 2, 3, 4]
        assert worker.health()["restarts"] == 0
    finally:
        await worker.aclose()


async def test_stopped_child_is_killed_on_missed_heartbeats() -> None:
    worker = echo_worker()
    await worker.start()
    try:
        first_pid = worker.pid
        assert first_pid is not None
        in_flight = asyncio.create_task(worker.call(Sleep(seconds=0.1, chunks=100)))
        await asyncio.sleep(0.3)
        os.kill(first_pid, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(WorkerDied, match=r"hung \(no heartbeat answer for 1\.\d s\)"):
            await in_flight
        detected_s = time.monotonic() - started
        assert detected_s < LIVENESS.heartbeat_timeout_s + LIVENESS.heartbeat_interval_s + SLACK_S
        await wait_until(lambda: worker.alive)
        assert worker.pid != first_pid
        assert worker.health()["last_exit"].endswith("killed by SIGKILL")
        assert await worker.call(Echo("back")) == ["back"]
    finally:
        await worker.aclose()


async def test_large_payloads_never_block_the_event_loop() -> None:
    worker = echo_worker()
    await worker.start()
    lags: list[float] = []

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.005)
            lags.append(loop.time() - before - 0.005)

    tick = asyncio.create_task(ticker())
    try:
        await asyncio.sleep(0.1)
        blob = np.ones(1024 * 1024, dtype=np.float32)  # 4 MB
        sizes = await asyncio.gather(*(worker.call(Blob(blob)) for _ in range(16)))
        assert sizes == [[blob.nbytes]] * 16
    finally:
        tick.cancel()
        await asyncio.gather(tick, return_exceptions=True)
        await worker.aclose()
    assert len(lags) > 5 and max(lags) < 0.05, f"max loop lag {max(lags) * 1000:.1f} ms"
