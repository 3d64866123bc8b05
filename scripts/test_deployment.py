#!/usr/bin/env python3
"""Checks a running S2S server with one spoken turn, the way the browser client sends it.

    python scripts/test_deployment.py --host localhost --port 8002 [--wav question.wav]

Prints the reply text and the end-of-turn to first-audio latency, saves the reply as a WAV,
and exits non-zero on any failure (no handshake, an error frame, no audio, a timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402

from utils.audio import WIRE_SAMPLE_RATE, read_wav, resample, write_wav_atomic  # noqa: E402
from utils.opus import OpusStreamDecoder, encode_browser_pages  # noqa: E402
from web_demo.server.protocol import HANDSHAKE_FRAME, Control, MsgType, encode_control  # noqa: E402

BUILT_IN_QUESTION = "Hello, can you hear me? What is the capital of France?"


def built_in_speech() -> Path:
    """Synthesises the built-in question offline with flite (or espeak-ng)."""
    out = Path(tempfile.mkdtemp()) / "question.wav"
    if shutil.which("flite"):
        cmd = ["flite", "-voice", "slt", "-t", BUILT_IN_QUESTION, "-o", str(out)]
    elif shutil.which("espeak-ng"):
        cmd = ["espeak-ng", "-w", str(out), BUILT_IN_QUESTION]
    else:
        raise SystemExit("no --wav given and neither flite nor espeak-ng is installed")
    subprocess.run(cmd, check=True, capture_output=True)
    return out


class TurnFailed(Exception):
    pass


async def run_turn(url: str, wav: Path, *, timeout_s: float, realtime: bool) -> dict:
    pcm, rate = read_wav(wav)
    pages = encode_browser_pages(resample(pcm, rate, WIRE_SAMPLE_RATE))
    result: dict = {"texts": [], "metadata": [], "audio_24k": []}
    decoder = OpusStreamDecoder()
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        first = await ws.receive(timeout=timeout_s)
        if first.type is not aiohttp.WSMsgType.BINARY or first.data != HANDSHAKE_FRAME:
            raise TurnFailed(f"no handshake, got {first.type.name} {first.data!r:.80}")
        await ws.send_bytes(encode_control(Control.START))
        for page in pages:  # 40 ms of audio per page
            await ws.send_bytes(bytes([MsgType.AUDIO]) + page)
            if realtime:
                await asyncio.sleep(0.04)
        await ws.send_bytes(encode_control(Control.END_TURN))
        turn_ended = time.perf_counter()
        while True:
            msg = await ws.receive(timeout=timeout_s)
            if msg.type is not aiohttp.WSMsgType.BINARY:
                raise TurnFailed(f"connection ended before the reply finished: {msg.type.name}")
            kind, payload = msg.data[0], msg.data[1:]
            if kind == MsgType.ERROR:
                raise TurnFailed(f"server error: {payload.decode()}")
            if kind == MsgType.AUDIO:
                result.setdefault("first_audio_s", time.perf_counter() - turn_ended)
                result["audio_24k"].append(decoder.decode(payload))
            elif kind == MsgType.TEXT:
                text = payload.decode()
                result["texts"].append(text)
                if text.startswith("\n[Final:"):
                    break
            elif kind == MsgType.METADATA:
                result["metadata"].append(json.loads(payload))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="localhost")
    p.add_argument("--port", type=int, default=8002)
    p.add_argument("--wav", type=Path, help="question to send (default: built-in speech)")
    p.add_argument("--out", type=Path, default=Path("reply.wav"))
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for any frame")
    p.add_argument("--fast", action="store_true", help="send the audio at once, not in real time")
    p.add_argument("--api-key", default=None, help="the server's --api-key, if it has one")
    a = p.parse_args(argv)
    url = f"ws://{a.host}:{a.port}/api/chat?extras=1"
    if a.api_key:
        url += f"&api_key={a.api_key}"
    try:
        result = asyncio.run(run_turn(url, a.wav or built_in_speech(), timeout_s=a.timeout,
                                      realtime=not a.fast))
    except (TurnFailed, aiohttp.ClientError, OSError, TimeoutError) as exc:
        print(f"FAIL: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    audio = np.concatenate(result["audio_24k"]) if result["audio_24k"] else np.zeros(0, np.float32)
    if len(audio) == 0:
        print("FAIL: the reply had no audio", file=sys.stderr)
        return 1
    write_wav_atomic(a.out, audio, WIRE_SAMPLE_RATE)
    heard = [m["text"] for m in result["metadata"] if m.get("type") == "transcript"]
    reply_text = "".join(t for t in result["texts"][1:] if not t.startswith("\n[Final:"))
    if heard:
        print(f"server heard:   {heard[0]}")
    print(f"reply text:     {reply_text}")
    print(f"first audio:    {result['first_audio_s'] * 1000:.0f} ms after end of turn")
    print(f"reply audio:    {len(audio) / WIRE_SAMPLE_RATE:.2f} s -> {a.out}")
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
