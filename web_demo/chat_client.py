"""An asyncio client for /api/chat that behaves like the upstream browser client.

One `ChatClient` per WebSocket. It speaks only what `web_demo.server.protocol` defines: it
reads the handshake, sends the microphone as whole Ogg/Opus pages (20 ms frames, 2 per page,
see `utils.opus.encode_browser_pages`) and one-byte control frames, and collects a reply
until its ``"\\n[Final: ...]"`` text frame. Tests, scripts/test_deployment.py and
benchmarks/s2s_load.py all use it.

    async with await ChatClient.connect("ws://localhost:8002/api/chat", api_key=key) as chat:
        reply = await chat.ask(pages)
        print(reply.final_text, reply.first_audio_s)
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt
from yarl import URL

from utils.opus import OpusStreamDecoder
from web_demo.server.protocol import HANDSHAKE_FRAME, Control, MsgType, encode_control, encode_metadata

FINAL_PREFIX = "\n[Final:"
PAGE_S = 0.04  # a browser page holds 2 x 20 ms Opus frames


class ChatError(Exception):
    """The connection did not behave as the protocol says (no handshake, closed mid-reply)."""


def chat_url(url: str, *, api_key: str | None = None, extras: bool = False) -> str:
    """Adds the query parameters the server reads; browsers cannot set WebSocket headers,
    so the API key travels as ``?api_key=``."""
    query: dict[str, str] = {}
    if api_key:
        query["api_key"] = api_key
    if extras:
        query["extras"] = "1"
    return str(URL(url).update_query(query)) if query else url


@dataclass
class Reply:
    """Everything that arrived for one reply (or within one receive window)."""

    texts: list[str] = field(default_factory=list)
    audio_pages: list[bytes] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    metadata: list[dict[str, Any]] = field(default_factory=list)
    pings: int = 0
    pcm_chunks_24k: list[npt.NDArray[np.float32]] = field(default_factory=list)  # empty if not decoding
    audio_times: list[float] = field(default_factory=list)  # time.perf_counter() per audio page
    turn_ended_at: float | None = None  # time.perf_counter() when the client ended the turn

    @property
    def pcm_24k(self) -> npt.NDArray[np.float32]:
        """The decoded reply audio, float32 [T] at 24 kHz."""
        return np.concatenate(self.pcm_chunks_24k) if self.pcm_chunks_24k else np.zeros(0, np.float32)

    @property
    def final(self) -> str | None:
        """The raw ``"\\n[Final: ...]"`` frame, or None while the reply is unfinished."""
        finals = [t for t in self.texts if t.startswith(FINAL_PREFIX)]
        return finals[-1] if finals else None

    @property
    def final_text(self) -> str | None:
        """The whole reply text the final frame carries."""
        final = self.final
        return None if final is None else final[len(FINAL_PREFIX):].removeprefix(" ").removesuffix("]")

    @property
    def transcripts(self) -> list[str]:
        """What the server heard (extras only: ``{"type": "transcript"}`` metadata)."""
        return [m["text"] for m in self.metadata if m.get("type") == "transcript"]

    @property
    def first_audio_s(self) -> float | None:
        """Seconds from the end of the user turn to the first reply audio page."""
        if self.turn_ended_at is None or not self.audio_times:
            return None
        return self.audio_times[0] - self.turn_ended_at

    @property
    def audio_gaps_s(self) -> list[float]:
        """Seconds between consecutive reply audio pages."""
        return [b - a for a, b in zip(self.audio_times, self.audio_times[1:], strict=False)]


class ChatClient:
    """One /api/chat connection. Owns the WebSocket (and the HTTP session if it made one)
    and the Opus decoder of the server's single audio stream."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, *, decode: bool = True,
                 http: aiohttp.ClientSession | None = None) -> None:
        """`ws` is an open /api/chat socket; `decode=False` keeps the Ogg pages but skips
        decoding them (a load generator's CPU is better spent elsewhere); `http`, if given,
        is closed with the client."""
        self.ws = ws
        self._decoder = OpusStreamDecoder() if decode else None
        self._own_http = http
        self._turn_ended_at: float | None = None

    @classmethod
    async def connect(cls, url: str, *, api_key: str | None = None, extras: bool = False,
                      http: aiohttp.ClientSession | None = None, handshake: bool = True,
                      decode: bool = True, compress: int = 0,
                      timeout_s: float = 10.0) -> ChatClient:
        """Opens `url` (ws://host:port/api/chat) and, unless `handshake=False`, checks the
        server's handshake frame. Without `http` the client makes and owns a session.
        `compress=15` offers permessage-deflate, as browsers do."""
        own = http is None
        session = aiohttp.ClientSession() if http is None else http
        try:
            ws = await session.ws_connect(chat_url(url, api_key=api_key, extras=extras),
                                          timeout=aiohttp.ClientWSTimeout(ws_close=10.0),
                                          compress=compress)
            chat = cls(ws, decode=decode, http=session if own else None)
        except BaseException:
            if own:
                await session.close()
            raise
        if handshake:
            try:
                frame = await chat.handshake(timeout=timeout_s)
                if frame != HANDSHAKE_FRAME:
                    raise ChatError(f"expected the handshake {HANDSHAKE_FRAME!r}, got {frame[:80]!r}")
            except BaseException:
                await chat.aclose()
                raise
        return chat

    async def aclose(self) -> None:
        await self.ws.close()
        if self._own_http is not None:
            await self._own_http.close()

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    # ---- send ---------------------------------------------------------------------------

    async def handshake(self, timeout: float = 10.0) -> bytes:
        """Returns the server's first frame (b"\\x00\\x00\\x00" from this server)."""
        msg = await self.ws.receive(timeout=timeout)
        if msg.type is not aiohttp.WSMsgType.BINARY:
            raise ChatError(f"no handshake: got {msg.type.name} {msg.data!r:.80}")
        data: bytes = msg.data
        return data

    async def send_pages(self, pages: Iterable[bytes], *, realtime: bool = False) -> None:
        """Sends Ogg pages as 0x01 frames; `realtime` paces them at one page per 40 ms on a
        fixed schedule, so sleep overshoot does not accumulate."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for i, page in enumerate(pages):
            await self.ws.send_bytes(bytes([MsgType.AUDIO]) + page)
            if realtime:
                await asyncio.sleep(max(0.0, t0 + (i + 1) * PAGE_S - loop.time()))

    async def control(self, action: Control) -> None:
        await self.ws.send_bytes(encode_control(action))
        if action in (Control.END_TURN, Control.PAUSE):  # both end the user turn
            self._turn_ended_at = time.perf_counter()

    async def send_metadata(self, data: Mapping[str, Any]) -> None:
        """A 0x04 frame, e.g. ``{"system_prompt": ...}`` (applies from the next turn)."""
        await self.ws.send_bytes(encode_metadata(dict(data)))

    async def turn(self, pages: Iterable[bytes], *, start: bool = True, realtime: bool = False) -> None:
        """One user turn: start (optional), the audio, endTurn."""
        if start:
            await self.control(Control.START)
        await self.send_pages(pages, realtime=realtime)
        await self.control(Control.END_TURN)

    async def ask(self, pages: Iterable[bytes], *, realtime: bool = False,
                  timeout: float = 30.0) -> Reply:
        """One turn and its whole reply."""
        await self.turn(pages, realtime=realtime)
        return await self.receive_reply(timeout=timeout)

    # ---- receive ------------------------------------------------------------------------

    async def receive_reply(self, timeout: float = 30.0) -> Reply:
        """Collects frames until the reply's final text frame; `timeout` bounds each frame.
        Error frames are collected, not raised: the server ends every reply with its final
        frame, failed or not."""
        reply = self._new_reply()
        while reply.final is None:
            self._collect(await self._receive(timeout, "during a reply"), reply)
        return reply

    async def receive_until_audio(self, timeout: float = 60.0) -> Reply:
        """Collects frames until the first reply audio arrives."""
        reply = self._new_reply()
        while not reply.audio_times:
            self._collect(await self._receive(timeout, "before any audio"), reply)
        return reply

    async def receive_for(self, seconds: float) -> Reply:
        """Collects whatever arrives within `seconds` (stops early if the socket ends)."""
        reply = self._new_reply()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            try:
                msg = await self.ws.receive(timeout=left)
            except TimeoutError:
                break
            if msg.type is not aiohttp.WSMsgType.BINARY:
                break
            self._collect(msg.data, reply)
        return reply

    def _new_reply(self) -> Reply:
        return Reply(turn_ended_at=self._turn_ended_at)

    async def _receive(self, timeout: float, where: str) -> bytes:
        msg = await self.ws.receive(timeout=timeout)
        if msg.type is not aiohttp.WSMsgType.BINARY:
            raise ChatError(f"socket ended {where}: {msg.type.name} {msg.data!r:.80} "
                            f"(close code {self.ws.close_code})")
        data: bytes = msg.data
        return data

    def _collect(self, frame: bytes, reply: Reply) -> None:
        now = time.perf_counter()
        kind, payload = frame[0], frame[1:]
        if kind == MsgType.TEXT:
            reply.texts.append(payload.decode())
        elif kind == MsgType.AUDIO:
            reply.audio_times.append(now)
            reply.audio_pages.append(payload)
            if self._decoder is not None:
                reply.pcm_chunks_24k.append(self._decoder.decode(payload))
        elif kind == MsgType.ERROR:
            reply.errors.append(payload.decode())
        elif kind == MsgType.METADATA:
            reply.metadata.append(json.loads(payload))
        elif kind == MsgType.PING:
            reply.pings += 1
