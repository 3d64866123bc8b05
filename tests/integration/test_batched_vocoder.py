"""Concurrent replies through the real vocoder worker are vocoded in shared batched steps, and
each gets the audio it would get alone."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.fakes import FAST
from utils.cosyvoice3.streaming import Token2Wav
from web_demo.server.engines.local import WorkerVocoder
from web_demo.server.errors import BadRequest
from web_demo.server.workers.vocoder_worker import VocoderStats, VocoderStatsRequest

pytestmark = pytest.mark.slow
CV3 = Path(__file__).resolve().parents[1] / "fixtures" / "cosyvoice3"
SPEECH_ATOL = 5e-4  # tests/cv3_golden.py's speech tolerance
STEP = 5  # speech tokens per LLM step


@pytest.fixture(scope="module")
def embedding() -> np.ndarray:
    return load_file(str(CV3 / "cases" / "inputs.safetensors"))["embedding"].astype(np.float32)


def _tokens(seed: int, n: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, 6561, n).tolist()


@pytest.mark.parametrize("static_shapes", [False, True], ids=["eager", "static-shapes"])
async def test_concurrent_streams_match_alone(tmp_path: Path, embedding: np.ndarray,
                                              static_shapes: bool) -> None:
    """static-shapes: the --vocoder-cuda-graphs path, whose steps run eagerly on the CPU."""
    speaker = tmp_path / "speaker.npy"
    np.save(speaker, embedding)
    vocoder = WorkerVocoder(cfg=replace(FAST, close_timeout_s=10), init_kwargs={
        "model_dir": str(CV3 / "tiny_model"), "device": "cpu", "speaker_embedding": str(speaker),
        "static_shapes": static_shapes})
    # (tokens, pushes to wait before starting, pushes before a barge-in or None)
    replies = [(_tokens(1, 90), 0, None), (_tokens(2, 60), 2, None), (_tokens(3, 120), 1, None),
               (_tokens(4, 100), 0, 9), (_tokens(5, 33), 6, None), (_tokens(6, 75), 3, None)]
    await vocoder.start()
    try:
        assert vocoder.health()["max_stream_batch"] > 1
        # every session pushes one LLM step at a time; a shared barrier makes their pushes
        # arrive together, as they do when one batched LLM decode step feeds them all
        barrier = asyncio.Barrier(len(replies))

        async def session(tokens: list[int], wait: int, cancel_at: int | None) -> list[np.ndarray]:
            stream = vocoder.open_stream()
            chunks: list[np.ndarray] = []
            groups = [tokens[i:i + STEP] for i in range(0, len(tokens), STEP)]
            rounds = 30
            for r in range(rounds):
                k = r - wait
                if cancel_at is not None and k == cancel_at:
                    await stream.aclose()  # barge-in: dropped without its tail
                elif cancel_at is not None and k > cancel_at:
                    pass
                elif 0 <= k < len(groups):
                    chunks += await stream.push(groups[k])
                elif k == len(groups):
                    chunks += await stream.finish()
                await barrier.wait()
            return chunks

        got = await asyncio.gather(*(session(*reply) for reply in replies))
        stats = (await vocoder.worker.call(VocoderStatsRequest()))[0]
        assert isinstance(stats, VocoderStats)
        assert stats.largest >= 3 and stats.calls > stats.batches  # shared steps happened
    finally:
        await vocoder.aclose()
    model = Token2Wav.from_model_dir(CV3 / "tiny_model")
    for i, (tokens, _, cancel_at) in enumerate(replies):
        alone = model.new_stream("cached", embedding=embedding)
        if cancel_at is None:
            want = np.concatenate([alone.push(tokens), alone.finalize()])
            assert len(want) == 960 * len(tokens)
        else:
            want = alone.push(tokens[:cancel_at * STEP])
        pcm = np.concatenate(got[i]) if got[i] else np.zeros(0, np.float32)
        assert pcm.shape == want.shape, f"reply {i}"
        np.testing.assert_allclose(pcm, want, atol=SPEECH_ATOL, err_msg=f"reply {i}")


class _Recorder:
    """A stream-batching handler that echoes each call's body, for the runtime's own checks."""

    max_stream_batch = 3

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, object]]] = []
        self.closed: list[str] = []

    def info(self) -> dict[str, object]:
        return {}

    def handle(self, request: object):
        raise NotImplementedError

    def open_stream(self, request: object) -> str:
        return str(request)

    def push(self, state, request):
        raise AssertionError("a stream-batching handler gets its pushes through step_streams")

    def finish(self, state):
        raise AssertionError("a stream-batching handler gets its finishes through step_streams")

    def close(self, state: str) -> None:
        self.closed.append(state)

    def step_streams(self, calls):
        self.batches.append([(c.state, c.body) for c in calls])
        return [[f"{c.state}:{c.body}"] for c in calls]


class _Pipe:
    def __init__(self) -> None:
        self.sent: list[object] = []

    def send(self, message: object) -> None:
        self.sent.append(message)


def test_runtime_batches_one_message_per_stream_in_order() -> None:
    """Takes the first queued push/finish of other streams, never past a stream's earlier
    message or a shutdown, and answers each request on its own."""
    from web_demo.server.workers.ipc import (
        CloseStream,
        Done,
        Failed,
        OpenStream,
        Result,
        Shutdown,
        StreamFinish,
        StreamPush,
    )
    from web_demo.server.workers.process import _Server

    handler, pipe = _Recorder(), _Pipe()
    server = _Server(handler, pipe)  # type: ignore[arg-type]
    server._streams = {1: "a", 2: "b", 3: "c", 4: "d"}
    queued = [StreamPush(11, 1, "x"),  # stream 1 is the batch's own: waits
              CloseStream(2),  # stream 2's close comes first: its push waits
              StreamPush(12, 2, "y"),
              OpenStream(13, 5, "e"),  # not a push: stays, and stream 5 is held behind it
              StreamPush(14, 5, "z"),
              StreamFinish(15, 3),  # taken
              StreamPush(16, 4, "w"),  # taken (the batch is now full: 3)
              StreamPush(17, 9, "v"),  # would fit the stream rule, but the batch is full
              Shutdown(), StreamPush(18, 6, "u")]
    for message in queued:
        server._inbox.put(message)
    first = StreamPush(10, 1, "p")
    taken = server._other_streams_queued(handler, first)
    assert [m.request_id for m in taken] == [15, 16]
    assert [getattr(m, "request_id", None) for m in server._backlog] == [11, None, 12, 13, 14, 17, None, 18]
    server._cancelled.add(16)  # cancelled while queued: not run, not answered
    server._serve_stream_batch(handler, [first, StreamPush(19, 7, "gone"), *taken])
    assert handler.batches == [[("a", "p"), ("c", None)]]  # a finish has no body
    assert handler.closed == ["c"] and 3 not in server._streams
    answers = [(type(m).__name__, m.request_id) for m in pipe.sent]
    assert answers == [("Failed", 19), ("Result", 10), ("Done", 10), ("Result", 15), ("Done", 15)]
    assert isinstance(pipe.sent[0], Failed) and pipe.sent[0].error().__class__ is BadRequest
    assert isinstance(pipe.sent[1], Result) and pipe.sent[1].result == "a:p"
    assert isinstance(pipe.sent[2], Done) and not server._cancelled
