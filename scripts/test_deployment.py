#!/usr/bin/env python3
"""Checks a running S2S server with one spoken turn, the way the browser client sends it.

    python scripts/test_deployment.py --host localhost --port 8002 [--wav question.wav]

Prints the reply text and the end-of-turn to first-audio latency, saves the reply as a WAV
(default output/reply.wav in the repository, which git ignores) and prints its path, and
exits non-zero on any failure (no handshake, an error frame, no audio, a timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

from utils.audio import WIRE_SAMPLE_RATE, read_wav, resample, write_wav_atomic
from utils.opus import encode_browser_pages
from web_demo.chat_client import ChatClient, ChatError, Reply

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "output" / "reply.wav"
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


async def run_turn(url: str, wav: Path, *, api_key: str | None, timeout_s: float,
                   realtime: bool) -> Reply:
    """One spoken turn; raises ChatError on no handshake, a dropped socket or an error frame."""
    pcm, rate = read_wav(wav)
    pages = encode_browser_pages(resample(pcm, rate, WIRE_SAMPLE_RATE))
    async with await ChatClient.connect(url, api_key=api_key, extras=True, timeout_s=timeout_s) as chat:
        reply = await chat.ask(pages, realtime=realtime, timeout=timeout_s)
    if reply.errors:
        raise ChatError(f"server error: {'; '.join(reply.errors)}")
    return reply


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="localhost")
    p.add_argument("--port", type=int, default=8002)
    p.add_argument("--wav", type=Path, help="question to send (default: built-in speech)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="where the reply WAV goes (default: output/reply.wav in the repository)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for any frame")
    p.add_argument("--fast", action="store_true", help="send the audio at once, not in real time")
    p.add_argument("--api-key", default=None, help="the server's --api-key, if it has one")
    a = p.parse_args(argv)
    url = f"ws://{a.host}:{a.port}/api/chat"
    try:
        reply = asyncio.run(run_turn(url, a.wav or built_in_speech(), api_key=a.api_key,
                                     timeout_s=a.timeout, realtime=not a.fast))
    except (ChatError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        print(f"FAIL: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    audio = reply.pcm_24k
    if len(audio) == 0 or reply.first_audio_s is None:
        print("FAIL: the reply had no audio", file=sys.stderr)
        return 1
    write_wav_atomic(a.out, audio, WIRE_SAMPLE_RATE)
    if reply.transcripts:
        print(f"server heard:   {reply.transcripts[0]}")
    print(f"reply text:     {reply.final_text}")
    print(f"first audio:    {reply.first_audio_s * 1000:.0f} ms after end of turn")
    print(f"reply audio:    {len(audio) / WIRE_SAMPLE_RATE:.2f} s")
    print(f"saved reply:    {a.out.resolve()}")
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
