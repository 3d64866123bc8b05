"""Reply audio -> Ogg/Opus, off the event loop: one encoder subprocess for all sessions.

Under load the reply encoder is most of a chat server's CPU (benchmarks/s2s_load.py,
benchmarks/opus_encode.py), and a thread cannot take it off the loop: the GIL handoffs cost
more than the encode. So a child process holds every session's OpusStreamEncoder and the
loop only writes PCM into a pipe and reads pages back (a few microseconds a frame).

Pipe format, little-endian: a request is (stream u32, op u8, length u32) + float32 PCM; a
reply is (stream u32, ok u8, length u32) + Ogg pages (ok 1) or a UTF-8 error (ok 0). The
child first writes one empty reply (stream 0, ok 1) once its imports are done, then answers
requests in order, except CLOSE, which has no answer. A stream's encoder is made by its
first request. If the child dies, the streams it held fail (their sessions
close with an error) and the next stream starts a new child; so does a child that leaves a
request unanswered for HUNG_AFTER_S, which is killed.

    python -m web_demo.server.reply_encoder   # the child; the server starts it
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import struct
import sys
from typing import BinaryIO, Protocol

import numpy as np

from utils.opus import OpusStreamEncoder
from web_demo.server.errors import EngineDead

logger = logging.getLogger(__name__)

HEADER = struct.Struct("<IBI")
ENCODE, FLUSH, CLOSE = 1, 2, 3
HUNG_AFTER_S = 5.0  # a 40 ms frame takes well under a millisecond
# Starting Python and importing PyAV and numpy: under a second, more on a loaded machine;
# the hung timer must not count it.
STARTUP_TIMEOUT_S = 30.0


class ReplyEncoder(Protocol):
    """One session's continuous reply stream."""

    async def encode(self, pcm_24k: np.ndarray) -> bytes:
        """The Ogg pages completed by this float32 PCM at 24 kHz (possibly b"")."""
        ...

    async def flush(self) -> bytes:
        """The partial frame, padded with silence."""
        ...

    def close(self) -> None:
        ...


class InlineReplyEncoder:
    """The encoder on the event loop (--reply-encoder inline, and for tests)."""

    def __init__(self) -> None:
        self._encoder = OpusStreamEncoder()

    async def encode(self, pcm_24k: np.ndarray) -> bytes:
        return self._encoder.encode(pcm_24k)

    async def flush(self) -> bytes:
        return self._encoder.flush()

    def close(self) -> None:
        return None


class ReplyEncoderProcess:
    """The child process and the futures of the requests it has not answered yet."""

    def __init__(self, *, hung_after_s: float = HUNG_AFTER_S) -> None:
        self._hung_after_s = hung_after_s
        self._process: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []  # the reply reader and the watchdog
        # (answer, loop time asked) of every request not answered yet, oldest first
        self._pending: collections.deque[tuple[asyncio.Future[bytes], float]] = collections.deque()
        self._ids = itertools.count(1)
        self._starting = asyncio.Lock()  # sessions arriving together share one new child

    @property
    def pid(self) -> int | None:
        """The running child's process id (None before the first session)."""
        return None if self._process is None else self._process.pid

    async def open_stream(self) -> ProcessReplyEncoder:
        async with self._starting:
            if self._process is None or self._process.returncode is not None:
                await self._start()
        assert self._process is not None
        return ProcessReplyEncoder(self, self._process, next(self._ids))

    async def _start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "web_demo.server.reply_encoder",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        await self._wait_ready(self._process)
        self._pending = collections.deque()
        self._tasks = [asyncio.create_task(self._read_replies(self._process, self._pending),
                                           name="reply-encoder-reader"),
                       asyncio.create_task(self._watch(self._process, self._pending),
                                           name="reply-encoder-watchdog")]
        logger.info("reply encoder process %d started", self._process.pid)

    async def _wait_ready(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        try:
            await asyncio.wait_for(process.stdout.readexactly(HEADER.size), STARTUP_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError) as exc:
            process.kill()
            code = await process.wait()
            raise EngineDead(f"the reply encoder process did not start ({code})") from exc

    def request(self, process: asyncio.subprocess.Process, stream: int, op: int,
                payload: bytes = b"") -> asyncio.Future[bytes] | None:
        """Writes one request to `process`; the future of its answer (None for CLOSE)."""
        if process is not self._process or process.returncode is not None or process.stdin is None:
            raise EngineDead("the reply encoder process exited")
        process.stdin.write(HEADER.pack(stream, op, len(payload)) + payload)
        if op == CLOSE:
            return None
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((future, loop.time()))
        return future

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
                    future.set_exception(RuntimeError(f"reply encoder: {payload.decode()}"))
        except (asyncio.IncompleteReadError, ConnectionError):
            code = await process.wait()
            if process is self._process:  # not a shutdown
                logger.error("reply encoder process %d exited with %s; its sessions fail", process.pid, code)
            for future, _ in pending:
                if not future.done():
                    future.set_exception(EngineDead(f"the reply encoder process exited ({code})"))

    async def _watch(self, process: asyncio.subprocess.Process,
                     pending: collections.deque[tuple[asyncio.Future[bytes], float]]) -> None:
        """Kills a child that stops answering; the reader then fails what it held."""
        loop = asyncio.get_running_loop()
        while process.returncode is None:
            await asyncio.sleep(self._hung_after_s / 4)
            if pending and loop.time() - pending[0][1] > self._hung_after_s:
                logger.error("reply encoder process %d did not answer for %g s; killing it",
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


class ProcessReplyEncoder:
    """A session's stream inside the encoder process."""

    def __init__(self, owner: ReplyEncoderProcess, process: asyncio.subprocess.Process,
                 stream: int) -> None:
        self._owner = owner
        self._process = process
        self._stream = stream

    async def encode(self, pcm_24k: np.ndarray) -> bytes:
        return await self._ask(ENCODE, np.ascontiguousarray(pcm_24k, dtype=np.float32).tobytes())

    async def flush(self) -> bytes:
        return await self._ask(FLUSH)

    async def _ask(self, op: int, payload: bytes = b"") -> bytes:
        future = self._owner.request(self._process, self._stream, op, payload)
        assert future is not None
        return await future

    def close(self) -> None:
        with contextlib.suppress(EngineDead):  # a dead child holds no encoder to free
            self._owner.request(self._process, self._stream, CLOSE)


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    """The child's loop: answers requests until its input ends."""
    encoders: dict[int, OpusStreamEncoder] = {}
    replies.write(HEADER.pack(0, 1, 0))  # ready
    replies.flush()
    while header := requests.read(HEADER.size):
        stream, op, length = HEADER.unpack(header)
        payload = requests.read(length)
        if op == CLOSE:
            encoders.pop(stream, None)
            continue
        encoder = encoders.get(stream)
        if encoder is None:
            encoder = encoders[stream] = OpusStreamEncoder()
        try:
            out = encoder.encode(np.frombuffer(payload, np.float32)) if op == ENCODE else encoder.flush()
            ok = 1
        except Exception as exc:  # told to the asking session; the others go on
            out, ok = f"{type(exc).__name__}: {exc}".encode(), 0
        replies.write(HEADER.pack(stream, ok, len(out)) + out)
        replies.flush()


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
