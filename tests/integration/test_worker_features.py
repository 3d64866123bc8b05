"""Batching handlers, stream handlers and worker pools, with real spawned subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import pytest

from tests.fakes import FAST, Add, BatchSizes, Echo, OpenCounter, Sleep, StreamStats, wait_until
from web_demo.server.errors import BadRequest, EngineBusy, WorkerDied
from web_demo.server.workers.client import WorkerClient
from web_demo.server.workers.pool import WorkerPool, make_worker
from web_demo.server.workers.supervisor import WorkerSupervisor

pytestmark = pytest.mark.slow


def counter_worker(max_streams: int = 4) -> WorkerSupervisor:
    return WorkerSupervisor(name="counter", handler="tests.fakes:CounterStreamHandler",
                            init_kwargs={"max_streams": max_streams}, cfg=FAST)


async def test_queued_requests_are_served_in_batches() -> None:
    worker = WorkerSupervisor(name="batch", handler="tests.fakes:BatchEchoHandler",
                              init_kwargs={"max_batch": 4, "step_s": 0.3}, cfg=FAST)
    await worker.start()
    try:
        first = asyncio.create_task(worker.call(Echo("first")))
        await asyncio.sleep(0.1)  # the first batch is running: the rest queue up behind it
        requests = [Echo(i, times=2) for i in range(9)] + [Echo("bad", times=-1)]
        outcomes = await asyncio.gather(*(worker.call(r) for r in requests),
                                        return_exceptions=True)
        assert await first == ["first"]
        assert outcomes[:9] == [[i, i] for i in range(9)]
        assert isinstance(outcomes[9], BadRequest) and outcomes[9].param == "times"
        (sizes,) = await worker.call(BatchSizes())
        assert sizes[0] == 1  # it never waits to fill a batch
        assert max(sizes) == 4 and sum(sizes) == 11  # at most max_batch; every request once
    finally:
        await worker.aclose()


async def test_streams_keep_state_until_finished_or_closed() -> None:
    worker = counter_worker()
    await worker.start()
    try:
        async with worker.open_stream(OpenCounter(100)) as a, worker.open_stream(OpenCounter()) as b:
            assert await a.push(Add(1)) == [(101, worker.pid)]
            assert await b.push(Add(5)) == [(5, worker.pid)]
            assert await a.push(Add(2)) == [(103, worker.pid)]
            assert await a.finish() == [("total", 103)]
            with pytest.raises(BadRequest, match="no open stream"):
                await a.push(Add(1))  # a finished stream is gone from the child
            with pytest.raises(BadRequest, match="expected Add") as info:
                await b.push(OpenCounter())
            assert info.value.param == "amount"
            assert await worker.call(StreamStats()) == [{"open": 1, "closed": 1}]
        # Leaving the block closed b without its tail.
        assert await worker.call(StreamStats()) == [{"open": 0, "closed": 2}]
        abandoned = worker.open_stream(OpenCounter())
        async with contextlib.aclosing(abandoned):
            await abandoned.push(Add(1))
        assert await worker.call(StreamStats()) == [{"open": 0, "closed": 3}]
    finally:
        await worker.aclose()


async def test_open_streams_are_capped() -> None:
    worker = counter_worker(max_streams=2)
    await worker.start()
    try:
        streams = [worker.open_stream(OpenCounter()) for _ in range(3)]
        await streams[0].open()
        await streams[1].open()
        with pytest.raises(EngineBusy, match="too many open streams"):
            await streams[2].push(Add(1))
        await streams[0].aclose()
        assert await streams[2].push(Add(1)) == [(1, worker.pid)]
        for stream in streams:
            await stream.aclose()
    finally:
        await worker.aclose()


async def test_a_stream_does_not_survive_its_worker() -> None:
    worker = counter_worker()
    await worker.start()
    try:
        stream = worker.open_stream(OpenCounter())
        await stream.push(Add(1))
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)
        await wait_until(lambda: not worker.alive)
        await wait_until(lambda: worker.alive)
        with pytest.raises(WorkerDied, match="stream's state was lost"):
            await stream.push(Add(1))
        await stream.aclose()
    finally:
        await worker.aclose()


async def test_pool_dispatches_to_the_least_loaded_member() -> None:
    pool = WorkerPool(name="echo", handler="tests.fakes:EchoHandler", members_init=[{}, {}],
                      cfg=FAST)
    await pool.start()
    try:
        slow = asyncio.create_task(pool.call(Sleep(seconds=1.0, chunks=1)))
        await wait_until(lambda: pool.pending == 1)
        busy = next(m for m in pool.members if m.pending == 1)
        # One at a time, every request goes to the idle member while the busy one works.
        assert [await pool.call(Echo(i)) for i in range(5)] == [[i] for i in range(5)]
        assert busy.pending == 1 and not slow.done()
        # Concurrent ones are spread: 4 more make the load 2 + 3, never 1 + 4.
        tasks = [asyncio.create_task(pool.call(Sleep(seconds=0.2, chunks=1))) for _ in range(4)]
        await asyncio.sleep(0)
        assert sorted(m.pending for m in pool.members) == [2, 3]
        await asyncio.gather(*tasks)
        assert await slow == [0]
        health = pool.health()
        assert health["alive"] and health["model"] == "echo" and len(health["members"]) == 2
        assert {m["pid"] for m in health["members"]} == {m.pid for m in pool.members}
    finally:
        await pool.aclose()


async def test_pool_pins_streams_and_survives_a_member_death() -> None:
    pool: WorkerClient = make_worker(name="counter", handler="tests.fakes:CounterStreamHandler",
                                     init_kwargs={}, devices=["cpu", "cpu"], cfg=FAST)
    assert isinstance(pool, WorkerPool)
    await pool.start()
    try:
        streams = [pool.open_stream(OpenCounter()) for _ in range(4)]
        pids = [(await s.push(Add(1)))[0][1] for s in streams]
        assert len(set(pids)) == 2  # spread over both members
        for _ in range(3):  # every push goes to the member holding that stream's state
            assert [(await s.push(Add(1)))[0][1] for s in streams] == pids
        victim = pool.members[0]
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        await wait_until(lambda: not victim.alive)
        survivor = pool.members[1]
        assert pool.alive and pool.health()["members"][0]["alive"] is False
        # New work goes to the survivor while the victim restarts.
        assert await pool.call(StreamStats()) == [{"open": 2, "closed": 0}]
        kept = [s for s, pid in zip(streams, pids) if pid == survivor.pid]
        assert [(await s.push(Add(1)))[0][0] for s in kept] == [5, 5]
        await wait_until(lambda: victim.alive)
        assert pool.health()["restarts"] == 1
        lost = [s for s, pid in zip(streams, pids) if pid != survivor.pid]
        with pytest.raises(WorkerDied, match="stream's state was lost"):
            await lost[0].push(Add(1))
        for stream in streams:
            await stream.aclose()
    finally:
        await pool.aclose()
