"""The Opus codec processes: the same audio as the inline codec both ways, streams kept apart
and spread over the pool, requests bigger than one read, and a child that dies or hangs fails
only the streams it held."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import numpy as np
import pytest

from utils.ogg import split_ogg_pages
from utils.opus import OpusStreamDecoder, decode_pages, encode_browser_pages
from web_demo.server.errors import EngineDead
from web_demo.server.opus_codec import MIC_SAMPLE_RATE, CodecPool, CodecProcess, InlineCodec, SessionCodec


def speechlike(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 24000)) / 24000
    return (0.2 * np.sin(2 * np.pi * (150 + 50 * seed) * t) * (1 + 0.3 * rng.standard_normal(len(t)))
            ).astype(np.float32)


async def encode_all(encoder: SessionCodec, pcm: np.ndarray, piece: int = 700) -> bytes:
    out = [await encoder.encode(pcm[i:i + piece]) for i in range(0, len(pcm), piece)]
    return b"".join(out) + await encoder.flush()


async def test_two_interleaved_streams_match_the_inline_encoder() -> None:
    encoders = CodecProcess()
    try:
        a, b = await encoders.open_stream(), await encoders.open_stream()
        pcm_a, pcm_b = speechlike(0.5, 1), speechlike(0.5, 2)
        got_a, got_b = await asyncio.gather(encode_all(a, pcm_a), encode_all(b, pcm_b))
        for got, pcm in ((got_a, pcm_a), (got_b, pcm_b)):
            want = decode_pages(split_ogg_pages(await encode_all(InlineCodec(), pcm)))
            decoded = decode_pages(split_ogg_pages(got))
            assert len(decoded) == len(want) >= len(pcm)
            np.testing.assert_array_equal(decoded, want)  # libopus is deterministic
        a.close()
        b.close()
    finally:
        await encoders.aclose()


async def test_the_pool_gives_each_stream_the_child_with_the_fewest() -> None:
    pool = CodecPool(2)
    try:
        a, b, c = [await pool.open_stream() for _ in range(3)]
        assert [p.open_streams for p in pool.processes] == [2, 1]
        assert len({p.pid for p in pool.processes}) == 2  # two children, both started
        a.close()
        a.close()  # a second close frees nothing more
        c.close()
        assert [p.open_streams for p in pool.processes] == [0, 1]
        d = await pool.open_stream()
        assert [p.open_streams for p in pool.processes] == [1, 1]
        pcm = speechlike(0.3, 3)
        want = await encode_all(InlineCodec(), pcm)
        assert decode_pages(split_ogg_pages(await encode_all(d, pcm))).size == \
            decode_pages(split_ogg_pages(want)).size
        b.close()
        d.close()
    finally:
        await pool.aclose()
    with pytest.raises(ValueError, match="at least one"):
        CodecPool(0)


async def test_mic_pages_decode_as_inline_and_bad_bytes_fail_only_their_request() -> None:
    codecs = CodecProcess()
    try:
        a, b = await codecs.open_stream(), await codecs.open_stream()
        pages_a, pages_b = encode_browser_pages(speechlike(0.6, 1)), encode_browser_pages(speechlike(0.6, 2))
        inline_a, inline_b = OpusStreamDecoder(MIC_SAMPLE_RATE), OpusStreamDecoder(MIC_SAMPLE_RATE)
        heard_b = 0
        for i, (page_a, page_b) in enumerate(zip(pages_a, pages_b, strict=False)):
            got_a, got_b = await asyncio.gather(a.decode(page_a), b.decode(page_b))
            heard_b += len(got_b)
            np.testing.assert_array_equal(got_a, inline_a.decode(page_a))
            np.testing.assert_array_equal(got_b, inline_b.decode(page_b))
            if i == 4:  # a's decoder starts over, as the inline one does; b's is untouched
                garbage = b"OggS" + np.random.default_rng(5).bytes(200)
                with pytest.raises(ValueError):
                    inline_a.decode(garbage)
                with pytest.raises(ValueError):
                    await a.decode(garbage)
        assert len(got_a) > 0  # the fresh decoder goes on with the stream's later pages
        assert abs(heard_b - 0.6 * MIC_SAMPLE_RATE) < 0.05 * MIC_SAMPLE_RATE  # at the model's rate
    finally:
        await codecs.aclose()


async def test_a_request_bigger_than_one_read_is_answered() -> None:
    codecs = CodecProcess()
    try:
        stream = await codecs.open_stream()
        pcm = speechlike(12.0, 4)  # 1.15 MB of float32: several reads of the child's pipe
        got = decode_pages(split_ogg_pages(await stream.encode(pcm) + await stream.flush()))
        want = decode_pages(split_ogg_pages(await encode_all(InlineCodec(), pcm, piece=len(pcm))))
        np.testing.assert_array_equal(got, want)
    finally:
        await codecs.aclose()


async def test_a_killed_child_fails_its_streams_and_the_next_stream_gets_a_new_one() -> None:
    encoders = CodecProcess()
    try:
        old = await encoders.open_stream()
        assert await old.encode(speechlike(0.04, 1))  # the headers and one page
        first_pid = encoders.pid
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        with pytest.raises(EngineDead, match="exited"):
            for _ in range(100):  # the answer in flight, or the next request, fails
                await old.encode(speechlike(0.04, 1))
                await asyncio.sleep(0.01)
        old.close()  # no error: there is nothing to free
        new = await encoders.open_stream()
        assert encoders.pid not in (None, first_pid)
        assert split_ogg_pages(await new.encode(speechlike(0.08, 2)))[0][5] == 0x02  # a fresh BOS page
    finally:
        await encoders.aclose()


async def test_a_hung_child_is_killed_and_its_streams_fail() -> None:
    encoders = CodecProcess(hung_after_s=0.4)
    try:
        stream = await encoders.open_stream()
        await stream.encode(speechlike(0.04, 1))
        pid = encoders.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        with pytest.raises(EngineDead):
            await asyncio.wait_for(stream.encode(speechlike(0.04, 1)), 5)
        await asyncio.wait_for(_wait_gone(pid), 5)  # the watchdog killed it
    finally:
        await encoders.aclose()


async def test_a_child_that_cannot_start_fails_the_stream_not_the_owner(
        monkeypatch: pytest.MonkeyPatch) -> None:
    encoders = CodecProcess()
    monkeypatch.setattr(sys, "executable", "/bin/false")  # exits before saying it is ready
    with pytest.raises(EngineDead, match="did not start"):
        await encoders.open_stream()
    monkeypatch.undo()
    try:
        stream = await encoders.open_stream()  # the next session gets a working child
        assert split_ogg_pages(await stream.encode(speechlike(0.08, 3)))[0][5] == 0x02
    finally:
        await encoders.aclose()


async def test_aclose_ends_the_child() -> None:
    encoders = CodecProcess()
    stream = await encoders.open_stream()
    await stream.encode(speechlike(0.04, 1))
    pid = encoders.pid
    assert pid is not None
    await encoders.aclose()
    assert encoders.pid is None
    await asyncio.wait_for(_wait_gone(pid), 5)


async def _wait_gone(pid: int) -> None:
    """Returns once `pid` is no longer a live process of ours (reaped or a zombie)."""
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return
        except FileNotFoundError:
            return
        await asyncio.sleep(0.02)
