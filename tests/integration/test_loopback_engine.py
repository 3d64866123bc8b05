"""The loopback engine through the real app: the reply is the user's own speech."""

from __future__ import annotations

import numpy as np

from tests.helpers import speech_24k
from utils.opus import encode_browser_pages
from web_demo.server.engines.loopback import LoopbackEngine


async def test_loopback_returns_the_spoken_audio(chat_server) -> None:
    _, connect = await chat_server(LoopbackEngine())
    chat = await connect()
    speech = speech_24k("hello")
    await chat.turn(encode_browser_pages(speech))
    reply = await chat.receive_reply()
    assert reply.errors == [] and reply.texts[1].startswith("[loopback] 2.")
    echoed = reply.pcm_24k
    assert abs(len(echoed) - len(speech)) < 0.1 * len(speech)
    # Two Opus passes and two resamplings: same envelope, so the energy profiles correlate.
    def envelope(x: np.ndarray) -> np.ndarray:
        n = len(x) // 2400
        return np.sqrt((x[:n * 2400].reshape(n, 2400) ** 2).mean(axis=1))
    a, b = envelope(speech), envelope(echoed)
    n = min(len(a), len(b))
    assert np.corrcoef(a[:n], b[:n])[0, 1] > 0.8
