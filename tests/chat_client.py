"""A test client for /api/chat that behaves like the upstream browser client."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

from utils.audio import WIRE_SAMPLE_RATE, read_wav, resample
from utils.opus import OpusStreamDecoder, encode_browser_pages
from web_demo.server.protocol import Control, MsgType, encode_control

FIXTURES = Path(__file__).parent / "fixtures"


def speech_24k(name: str) -> np.ndarray:
    pcm, rate = read_wav(FIXTURES / "speech" / f"{name}.wav")
    return resample(pcm, rate, WIRE_SAMPLE_RATE)


def tone_pages(seconds: float, freq: float = 440.0) -> list[bytes]:
    t = np.arange(int(seconds * WIRE_SAMPLE_RATE)) / WIRE_SAMPLE_RATE
    return encode_browser_pages((0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32))


@dataclass
class Reply:
    texts: list[str] = field(default_factory=list)
    audio_pages: list[bytes] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    metadata: list[dict] = field(default_factory=list)
    pings: int = 0
    pcm_chunks_24k: list[np.ndarray] = field(default_factory=list)

    @property
    def pcm_24k(self) -> np.ndarray:
        return np.concatenate(self.pcm_chunks_24k) if self.pcm_chunks_24k else np.zeros(0, np.float32)

    @property
    def final(self) -> str | None:
        finals = [t for t in self.texts if t.startswith("\n[Final:")]
        return finals[-1] if finals else None


class ChatClient:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._decoder = OpusStreamDecoder()  # the server's audio is one stream per connection

    async def handshake(self) -> bytes:
        msg = await self.ws.receive(timeout=10)
        assert msg.type is aiohttp.WSMsgType.BINARY, msg
        return msg.data

    async def send_pages(self, pages: list[bytes], *, realtime: bool = False) -> None:
        for page in pages:
            await self.ws.send_bytes(bytes([MsgType.AUDIO]) + page)
            if realtime:
                await asyncio.sleep(0.04)

    async def control(self, action: Control) -> None:
        await self.ws.send_bytes(encode_control(action))

    async def turn(self, pages: list[bytes], *, start: bool = True) -> None:
        if start:
            await self.control(Control.START)
        await self.send_pages(pages)
        await self.control(Control.END_TURN)

    async def receive_reply(self, timeout: float = 30.0) -> Reply:
        """Collects frames until the reply's final text frame."""
        reply = Reply()
        while True:
            msg = await self.ws.receive(timeout=timeout)
            if msg.type is not aiohttp.WSMsgType.BINARY:
                raise AssertionError(f"socket ended during a reply: {msg}")
            self._collect(msg.data, reply)
            if reply.final is not None:
                return reply

    async def receive_until_audio(self, timeout: float = 60.0) -> Reply:
        """Collects frames until the first reply audio arrives."""
        reply = Reply()
        while not reply.audio_pages:
            msg = await self.ws.receive(timeout=timeout)
            if msg.type is not aiohttp.WSMsgType.BINARY:
                raise AssertionError(f"socket ended before any audio: {msg}")
            self._collect(msg.data, reply)
        return reply

    async def receive_for(self, seconds: float) -> Reply:
        """Collects whatever arrives within `seconds`."""
        reply = Reply()
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

    def _collect(self, frame: bytes, reply: Reply) -> None:
        kind, payload = frame[0], frame[1:]
        if kind == MsgType.TEXT:
            reply.texts.append(payload.decode())
        elif kind == MsgType.AUDIO:
            reply.audio_pages.append(payload)
            reply.pcm_chunks_24k.append(self._decoder.decode(payload))
        elif kind == MsgType.ERROR:
            reply.errors.append(payload.decode())
        elif kind == MsgType.METADATA:
            reply.metadata.append(json.loads(payload))
        elif kind == MsgType.PING:
            reply.pings += 1
