"""Batched decoding across sessions: same tokens as alone, joins at any step, cancel, asyncio."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tests.fac_golden import wav
from utils.funaudiochat import ConversationState, SamplingParams, Scheduler, UserTurn, stream_turn


def _sessions():
    a1, a2 = wav("audio_turn1.wav"), wav("audio_turn2.wav")
    greedy = dict(top_k=1)
    # (audio, params, mode, history assistant text or None): different prompt lengths and modes
    return [
        (a1, SamplingParams(max_steps=9, **greedy), "s2s", None),
        (a2, SamplingParams(max_steps=7, **greedy), "s2s", None),
        (a1[:20000], SamplingParams(max_steps=8, **greedy), "s2s", "Earlier reply."),
        (a2[:30000], SamplingParams(max_steps=6, seed=3), "s2s", None),  # real sampling, seeded
        (a1[:25000], SamplingParams(max_steps=5, do_sample=False), "s2t", None),
    ]


def _state(runtime, history: str | None, mode: str) -> ConversationState:
    state = ConversationState()
    if history is not None:
        state.add_user_message(runtime, UserTurn(audio=wav("audio_turn2.wav")[:16000]), speech=mode == "s2s")
        state.add_assistant_message(history)
    return state


@pytest.fixture
def scheduler(runtime):
    sched = Scheduler(runtime)
    sched.start()
    yield sched
    sched.stop()


def test_batched_equals_alone_with_staggered_joins(runtime, scheduler) -> None:
    specs = _sessions()
    alone = []
    for audio, params, mode, hist in specs:
        state = _state(runtime, hist, mode)
        alone.append(list(stream_turn(runtime, state, UserTurn(audio=audio), params, mode=mode)))

    handles, got = [], []
    for audio, params, mode, hist in specs:
        h = scheduler.submit(_state(runtime, hist, mode), UserTurn(audio=audio), params, mode=mode)
        it = iter(h)
        handles.append(it)
        got.append(list(itertools.islice(it, 2)))  # the next session joins after these steps
    for steps, it in zip(got, handles):
        steps.extend(it)
    assert got == alone
    assert scheduler.num_active == 0


def test_cancel_ends_stream_and_frees_row(runtime, scheduler) -> None:
    state = ConversationState()
    handle = scheduler.submit(state, UserTurn(audio=wav("audio_turn1.wav")),
                              SamplingParams(top_k=1, max_steps=50))
    it = iter(handle)
    assert len(list(itertools.islice(it, 3))) == 3
    handle.cancel()
    rest = list(it)
    assert len(rest) < 47
    assert handle.done.is_set() and not state.busy and scheduler.num_active == 0
    assert state.messages[-1].role == "assistant"


def test_asyncio_stream_does_not_block_loop(runtime, scheduler) -> None:
    async def main() -> tuple[int, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        tick_task = asyncio.create_task(ticker())
        handle = scheduler.submit(ConversationState(), UserTurn(audio=wav("audio_turn1.wav")),
                                  SamplingParams(top_k=1, max_steps=6))
        steps = [s async for s in handle]
        tick_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await tick_task
        return len(steps), ticks

    n, ticks = asyncio.run(main())
    assert n == 6 and ticks > 0


def test_same_conversation_twice_is_refused(runtime, scheduler) -> None:
    state = ConversationState()
    h = scheduler.submit(state, UserTurn(audio=wav("audio_turn1.wav")), SamplingParams(top_k=1, max_steps=3))
    with pytest.raises(RuntimeError):
        scheduler.submit(state, UserTurn(audio=wav("audio_turn1.wav")))
    assert len(list(h)) == 3


def test_cancel_right_after_submit_is_never_lost(runtime, scheduler) -> None:
    # A barge-in can arrive while the turn is being admitted (prefilled); the turn must
    # still stop at once instead of decoding to max_steps.
    audio = wav("audio_turn1.wav")[:16000]
    for _ in range(5):
        handle = scheduler.submit(ConversationState(), UserTurn(audio=audio),
                                  SamplingParams(max_steps=400, top_k=1))
        handle.cancel()
        steps = list(handle)
        assert len(steps) <= 2 and handle.done.is_set()
    assert scheduler.num_active == 0


def test_queue_position_while_the_batch_is_full(runtime) -> None:
    sched = Scheduler(runtime, max_batch=1)
    sched.start()
    try:
        audio = wav("audio_turn1.wav")[:16000]
        first = sched.submit(ConversationState(), UserTurn(audio=audio),
                             SamplingParams(max_steps=400, top_k=1))
        next(iter(first))  # admitted: the only slot is taken
        waiting = [sched.submit(ConversationState(), UserTurn(audio=audio),
                                SamplingParams(max_steps=3, top_k=1))
                   for _ in range(2)]
        assert [sched.queue_position(h) for h in waiting] == [1, 2]
        first.cancel()
        for h in waiting:
            assert len(list(h)) == 3
        assert sched.queue_position(waiting[0]) is None
    finally:
        sched.stop()
