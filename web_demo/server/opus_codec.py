"""Opus for /api/chat, off the event loop: a few codec subprocesses shared by all sessions.

Under load the Opus codec is most of a chat server's CPU (benchmarks/s2s_load.py --profile:
the reply encoder, then the microphone decoder), and a thread cannot take it off the loop:
the GIL handoffs cost more than the codec. So child processes hold the sessions' mic
decoders and reply encoders (a session's both in one child, the child with the fewest open
streams), and the loop only writes bytes into pipes and reads bytes back. One child is one
core at most: at 250 sessions the codec needs about 0.9 of one, so the default pool is two.
The requests of one event-loop turn leave in one write and the child answers what it has
read in a write every REPLY_EVERY_S, so the pipe costs a few system calls per loop turn, not
per frame.

Pipe format, little-endian: a request is (stream u32, op u8, length u32) + payload (ENCODE:
float32 PCM at 24 kHz; DECODE: Ogg pages; FLUSH, CLOSE: none); a reply is (stream u32, ok u8,
length u32) + Ogg pages (ENCODE, FLUSH), float32 PCM at 16 kHz (DECODE), or a UTF-8 error
(ok 0). The child first writes one empty reply (stream 0, ok 1) once its imports are done,
then answers requests in order, except CLOSE, which has no answer. A stream's encoder and
decoder are made by its first request of each kind. If the child dies, the streams it held
fail (their sessions close with an error) and the next stream starts a new child; so does a
child that leaves a request unanswered for HUNG_AFTER_S, which is killed.

    python -m web_demo.server.opus_codec   # the child; the server starts it
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import logging
import os
import struct
import sys
import time
from typing import Any, BinaryIO, Protocol

import numpy as np

from utils.audio import MODEL_SAMPLE_RATE
from utils.opus import OpusStreamDecoder, OpusStreamEncoder
from web_demo.server.errors import EngineDead

logger = logging.getLogger(__name__)

HEADER = struct.Struct("<IBI")
ENCODE, FLUSH, CLOSE, DECODE = 1, 2, 3, 4
HUNG_AFTER_S = 5.0  # a 40 ms frame takes well under a millisecond either way
# Starting Python and importing PyAV, sphn and numpy: under a second, more on a loaded
# machine; the hung timer must not count it.
STARTUP_TIMEOUT_S = 30.0
_READ_BYTES = 1 << 20  # the child reads whatever has arrived, up to this
# A read under load brings hundreds of requests (tens of ms of work): answers go out every
# few ms, so the first ones do not wait for the last (a reply frame waits for its answer).
REPLY_EVERY_S = 0.002
# The mic is decoded straight to the model's rate: every consumer (the turn, the VAD) wants
# 16 kHz, and libopus decoding at 16 kHz costs less than at 24 kHz plus a resample.
MIC_SAMPLE_RATE = MODEL_SAMPLE_RATE


class SessionCodec(Protocol):
    """One session's continuous mic stream (Ogg/Opus in) and reply stream (Ogg/Opus out)."""

    def decode(self, ogg: bytes) -> asyncio.Future[np.ndarray]:
        """Starts decoding these mic pages (in the order asked); the future gets float32 PCM
        at 16 kHz (MIC_SAMPLE_RATE), or ValueError on bytes the decoder rejects (the stream
        goes on with later pages). A caller may ask for the next pages before this answer is
        in."""
        ...

    async def encode(self, pcm_24k: np.ndarray) -> bytes:
        """The Ogg pages completed by this float32 PCM at 24 kHz (possibly b"")."""
        ...

    async def flush(self) -> bytes:
        """The partial reply frame, padded with silence."""
        ...

    def close(self) -> None:
        ...


class InlineCodec:
    """The codec on the event loop (--opus-codec inline, and for tests)."""

    def __init__(self) -> None:
        self._decoder = OpusStreamDecoder(MIC_SAMPLE_RATE)
        self._encoder = OpusStreamEncoder()

    def decode(self, ogg: bytes) -> asyncio.Future[np.ndarray]:
        pcm = asyncio.get_running_loop().create_future()
        try:
            pcm.set_result(self._decoder.decode(ogg))
        except ValueError as exc:
            pcm.set_exception(exc)
        return pcm

    async def encode(self, pcm_24k: np.ndarray) -> bytes:
        return self._encoder.encode(pcm_24k)

    async def flush(self) -> bytes:
        return self._encoder.flush()

    def close(self) -> None:
        return None


class CodecPool:
    """The codec processes of a server; each starts with the first stream it is given."""

    def __init__(self, size: int, *, hung_after_s: float = HUNG_AFTER_S) -> None:
        if size < 1:
            raise ValueError(f"a codec pool needs at least one process, got {size}")
        self.processes = [CodecProcess(hung_after_s=hung_after_s) for _ in range(size)]

    async def open_stream(self) -> ProcessCodec:
        return await min(self.processes, key=lambda p: p.open_streams).open_stream()

    def health(self) -> list[dict[str, Any]]:
        """Per child: its pid (None before its first session), whether it runs, its streams.
        A child that died is started again by the next session given to it."""
        return [{"pid": p.pid, "alive": p.alive, "streams": p.open_streams} for p in self.processes]

    async def aclose(self) -> None:
        await asyncio.gather(*(process.aclose() for process in self.processes))


class CodecProcess:
    """The child process and the futures of the requests it has not answered yet."""

    def __init__(self, *, hung_after_s: float = HUNG_AFTER_S) -> None:
        self._hung_after_s = hung_after_s
        self.open_streams = 0  # handed out and not closed yet, across restarts
        self._process: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []  # the reply reader and the watchdog
        # (answer, loop time asked) of every request not answered yet, oldest first
        self._pending: collections.deque[tuple[asyncio.Future[bytes], float]] = collections.deque()
        self._unsent = bytearray()  # requests of this loop turn, written together at its end
        self._ids = itertools.count(1)
        self._starting = asyncio.Lock()  # sessions arriving together share one new child

    @property
    def pid(self) -> int | None:
        """The running child's process id (None before the first session)."""
        return None if self._process is None else self._process.pid

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def open_stream(self) -> ProcessCodec:
        async with self._starting:
            if self._process is None or self._process.returncode is not None:
                await self._start()
        assert self._process is not None
        self.open_streams += 1
        return ProcessCodec(self, self._process, next(self._ids))

    async def _start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "web_demo.server.opus_codec",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        await self._wait_ready(self._process)
        self._pending, self._unsent = collections.deque(), bytearray()
        self._tasks = [asyncio.create_task(self._read_replies(self._process, self._pending),
                                           name="opus-codec-reader"),
                       asyncio.create_task(self._watch(self._process, self._pending),
                                           name="opus-codec-watchdog")]
        logger.info("opus codec process %d started", self._process.pid)

    async def _wait_ready(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        try:
            await asyncio.wait_for(process.stdout.readexactly(HEADER.size), STARTUP_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError) as exc:
            with contextlib.suppress(ProcessLookupError):  # it may have exited already
                process.kill()
            code = await process.wait()
            raise EngineDead(f"the opus codec process did not start ({code})") from exc

    def request(self, process: asyncio.subprocess.Process, stream: int, op: int,
                payload: bytes = b"") -> asyncio.Future[bytes] | None:
        """Queues one request to `process`; the future of its answer (None for CLOSE)."""
        if process is not self._process or process.returncode is not None:
            raise EngineDead("the opus codec process exited")
        loop = asyncio.get_running_loop()
        if not self._unsent:
            loop.call_soon(self._write_unsent, process)
        self._unsent += HEADER.pack(stream, op, len(payload))
        self._unsent += payload
        if op == CLOSE:
            return None
        future = loop.create_future()
        self._pending.append((future, loop.time()))
        return future

    def _write_unsent(self, process: asyncio.subprocess.Process) -> None:
        if process is not self._process or process.stdin is None:
            return  # the reader fails the futures of a child that is gone
        process.stdin.write(bytes(self._unsent))
        self._unsent.clear()

    async def _read_replies(self, process: asyncio.subprocess.Process,
                            pending: collections.deque[tuple[asyncio.Future[bytes], float]]) -> None:
        assert process.stdout is not None
        try:
            while True:
                _, ok, length = HEADER.unpack(await process.stdout.readexactly(HEADER.size))
                payload = await process.stdout.readexactly(length)
                future, _ = pending.popleft()
                if future.done():  # its session was cancelled while waiting
                    continue
                if ok:
                    future.set_result(payload)
                else:
                    future.set_exception(ValueError(payload.decode()))
        except (asyncio.IncompleteReadError, ConnectionError):
            code = await process.wait()
            if process is self._process:  # not a shutdown
                logger.error("opus codec process %d exited with %s; its sessions fail", process.pid, code)
            for future, _ in pending:
                if not future.done():
                    future.set_exception(EngineDead(f"the opus codec process exited ({code})"))

    async def _watch(self, process: asyncio.subprocess.Process,
                     pending: collections.deque[tuple[asyncio.Future[bytes], float]]) -> None:
        """Kills a child that stops answering; the reader then fails what it held."""
        loop = asyncio.get_running_loop()
        while process.returncode is None:
            await asyncio.sleep(self._hung_after_s / 4)
            if pending and loop.time() - pending[0][1] > self._hung_after_s:
                logger.error("opus codec process %d did not answer for %g s; killing it",
                             process.pid, self._hung_after_s)
                process.kill()
                return

    async def aclose(self) -> None:
        process, tasks = self._process, self._tasks
        self._process, self._tasks = None, []
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()  # the child exits at the end of its input
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class ProcessCodec:
    """A session's streams inside the codec process."""

    def __init__(self, owner: CodecProcess, process: asyncio.subprocess.Process,
                 stream: int) -> None:
        self._owner = owner
        self._process = process
        self._stream = stream
        self._open = True

    def decode(self, ogg: bytes) -> asyncio.Future[np.ndarray]:
        answer = self._owner.request(self._process, self._stream, DECODE, ogg)
        assert answer is not None
        pcm: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        answer.add_done_callback(functools.partial(_as_pcm, pcm))
        return pcm

    async def encode(self, pcm_24k: np.ndarray) -> bytes:
        return await self._ask(ENCODE, np.ascontiguousarray(pcm_24k, dtype=np.float32).tobytes())

    async def flush(self) -> bytes:
        return await self._ask(FLUSH)

    async def _ask(self, op: int, payload: bytes = b"") -> bytes:
        future = self._owner.request(self._process, self._stream, op, payload)
        assert future is not None
        return await future

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        self._owner.open_streams -= 1
        with contextlib.suppress(EngineDead):  # a dead child holds no codec to free
            self._owner.request(self._process, self._stream, CLOSE)


def _as_pcm(pcm: asyncio.Future[np.ndarray], answer: asyncio.Future[bytes]) -> None:
    """Passes the child's answer (float32 bytes) on to the session's future as an array."""
    if answer.cancelled():
        pcm.cancel()
        return
    exc = answer.exception()  # retrieved even when nobody waits for it any more
    if pcm.cancelled():
        return
    if exc is not None:
        pcm.set_exception(exc)
    else:
        pcm.set_result(np.frombuffer(answer.result(), np.float32))


class _ChildCodecs:
    """The child's side: every stream's encoder and decoder, made on first use."""

    def __init__(self) -> None:
        self._encoders: dict[int, OpusStreamEncoder] = {}
        self._decoders: dict[int, OpusStreamDecoder] = {}

    def answer(self, stream: int, op: int, payload: bytes) -> bytes | None:
        """The reply to one request, header included (None for CLOSE)."""
        if op == CLOSE:
            self._encoders.pop(stream, None)
            self._decoders.pop(stream, None)
            return None
        try:
            out, ok = self._run(stream, op, payload), 1
        except Exception as exc:  # told to the asking session; the others go on
            out, ok = f"{type(exc).__name__}: {exc}".encode(), 0
        return HEADER.pack(stream, ok, len(out)) + out

    def _run(self, stream: int, op: int, payload: bytes) -> bytes:
        if op == DECODE:
            decoder = (self._decoders.get(stream)
                       or self._decoders.setdefault(stream, OpusStreamDecoder(MIC_SAMPLE_RATE)))
            return decoder.decode(payload).tobytes()
        if op not in (ENCODE, FLUSH):
            raise ValueError(f"unknown op {op}")
        encoder = self._encoders.get(stream) or self._encoders.setdefault(stream, OpusStreamEncoder())
        return encoder.encode(np.frombuffer(payload, np.float32)) if op == ENCODE else encoder.flush()


def serve(requests_fd: int, replies: BinaryIO) -> None:
    """The child's loop: answers every whole request each read brings, in writes of the
    answers ready each REPLY_EVERY_S, until its input ends."""
    codecs = _ChildCodecs()
    replies.write(HEADER.pack(0, 1, 0))  # ready
    replies.flush()
    buffer = bytearray()
    while chunk := os.read(requests_fd, _READ_BYTES):
        buffer += chunk
        out = bytearray()
        pos = 0
        due = time.perf_counter() + REPLY_EVERY_S
        while len(buffer) - pos >= HEADER.size:
            stream, op, length = HEADER.unpack_from(buffer, pos)
            end = pos + HEADER.size + length
            if end > len(buffer):
                break  # the rest of this request comes with a later read
            out += codecs.answer(stream, op, bytes(buffer[pos + HEADER.size:end])) or b""
            pos = end
            if time.perf_counter() >= due:
                _write(replies, out)
                due = time.perf_counter() + REPLY_EVERY_S
        del buffer[:pos]
        _write(replies, out)


def _write(replies: BinaryIO, out: bytearray) -> None:
    if out:
        replies.write(out)
        replies.flush()
        out.clear()


if __name__ == "__main__":
    serve(sys.stdin.fileno(), sys.stdout.buffer)
