#!/usr/bin/env python3
"""TTS service throughput: time to first audio byte and real-time factor through HTTP.

The real TTS app (make_app with the service's engine, served in this process on a local
port) is driven with streamed `POST /v1/audio/speech` requests (response_format pcm, so the
first byte is the first audio, not an encoder header) at each concurrency, for:
- espeak-ng, the CPU stand-in;
- CosyVoice3, our own runtime: the tiny random-weight model of the tests on CPU by default, or a
  real model directory (--cosyvoice3-dir, with --device cuda:0 on a GPU), speaking with a
  speaker saved from the tests' prompt WAV.
The tiny model samples freely and /v1/audio/speech has no seed, so reply lengths vary per
request: the table reports seconds of audio against wall time (an aggregate RTF), not
requests per second.

TTFB: request sent -> first body byte. RTF: wall time of the whole level / seconds of audio
produced (0.1 = ten seconds of speech per second). The load generator shares the machine.

    python benchmarks/tts_throughput.py --concurrency 1,4,8 --requests 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from web_demo.server.app import LIFECYCLE, make_app
from web_demo.server.config import HttpConfig, TtsServiceConfig, WorkerConfig
from web_demo.server.engines.tts_service import build_tts_service_engine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tiny test model's builder lives in tests/
PROMPT_TEXT = "希望你以后能够做的比我还好呦。"  # a zero-shot transcript; the tiny model reads any
TEXT = ("The quick brown fox jumps over the lazy dog. It was a bright cold day in April, "
        "and the clocks were striking thirteen.")
PCM_RATE, PCM_BYTES = 24_000, 2  # OpenAI's pcm: 24 kHz s16le
WORKERS = WorkerConfig(request_timeout_s=600.0, hang_timeout_s=600.0)


@dataclass
class Row:
    engine: str
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    audio_s: float
    rtf: float
    ttfb_p50_ms: float
    ttfb_max_ms: float


async def serve(cfg: TtsServiceConfig) -> tuple[web.AppRunner, int]:
    """The TTS app on a free local port; returns once its engine is ready."""
    app = make_app(HttpConfig(host="127.0.0.1", port=0, log_level="WARNING"),
                   tts=build_tts_service_engine(cfg, WORKERS), tts_config=cfg)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    await asyncio.wait_for(app[LIFECYCLE].started.wait(), 600)
    if app[LIFECYCLE].failure:
        await runner.cleanup()
        raise RuntimeError(f"the TTS app failed to start: {app[LIFECYCLE].failure}")
    return runner, sock.getsockname()[1]


async def one(http: aiohttp.ClientSession, url: str, voice: str) -> tuple[float, float]:
    """(seconds to the first body byte, seconds of audio received)."""
    started = time.perf_counter()
    body = {"model": "tts-1", "input": TEXT, "voice": voice, "response_format": "pcm"}
    async with http.post(url, json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {(await response.text())[:200]}")
        ttfb, received = None, 0
        async for data in response.content.iter_any():
            ttfb = ttfb if ttfb is not None else time.perf_counter() - started
            received += len(data)
    return (ttfb or time.perf_counter() - started), received / PCM_BYTES / PCM_RATE


async def level(http: aiohttp.ClientSession, url: str, *, engine: str, voice: str, concurrency: int,
                requests: int) -> Row:
    gate = asyncio.Semaphore(concurrency)

    async def gated() -> tuple[float, float] | None:
        async with gate:
            try:
                return await one(http, url, voice)
            except (RuntimeError, aiohttp.ClientError):
                return None

    started = time.perf_counter()
    results = await asyncio.gather(*(gated() for _ in range(requests)))
    wall = time.perf_counter() - started
    ok = [r for r in results if r is not None]
    ttfbs = [r[0] * 1000 for r in ok] or [float("nan")]
    audio = sum(r[1] for r in ok)
    return Row(engine, concurrency, requests, requests - len(ok), wall, audio,
               wall / audio if audio else float("nan"), statistics.median(ttfbs), max(ttfbs))


async def bench_engine(name: str, cfg: TtsServiceConfig, voice: str, args: argparse.Namespace) -> list[Row]:
    runner, port = await serve(cfg)
    url = f"http://127.0.0.1:{port}/v1/audio/speech"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as http:
            await one(http, url, voice)  # warm-up: first-call allocations, caches
            return [await level(http, url, engine=name, voice=voice, concurrency=c,
                                requests=max(args.requests, c)) for c in args.concurrency]
    finally:
        await runner.cleanup()


def cosyvoice3_config(args: argparse.Namespace, tmp: Path) -> tuple[TtsServiceConfig, str]:
    """The CosyVoice3 engine's config and a voice to ask for (a speaker saved from the
    test prompt, so no request pays for prompt features)."""
    from tests.cosyvoice3_tts_tiny import tiny_tts_dir
    from tests.tts_golden import PROMPT_WAV
    from utils.cosyvoice3.speakers import save_speaker
    from utils.cosyvoice3.synthesizer import CosyVoice3Tts

    model = args.cosyvoice3_dir or tiny_tts_dir(tmp / "tiny", greedy=False)
    speakers = tmp / "speakers"
    speakers.mkdir()
    tts = CosyVoice3Tts.from_model_dir(model)
    save_speaker(speakers / "bench.safetensors", tts.make_speaker(PROMPT_WAV, PROMPT_TEXT))
    return TtsServiceConfig(model_path=Path(model), device=args.device, speakers_dir=speakers,
                            max_batch=max(args.concurrency), engine="cosyvoice3"), "bench"


def print_table(rows: list[Row]) -> None:
    head = (f"{'engine':<11} | {'conc':>4} | {'req':>3} | {'err':>3} | {'wall s':>7} | {'audio s':>7} | "
            f"{'RTF':>6} | {'TTFB p50 ms':>11} | {'TTFB max ms':>11}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r.engine:<11} | {r.concurrency:>4} | {r.requests:>3} | {r.errors:>3} | {r.wall_s:>7.2f} | "
              f"{r.audio_s:>7.1f} | {r.rtf:>6.3f} | {r.ttfb_p50_ms:>11.0f} | {r.ttfb_max_ms:>11.0f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8])
    p.add_argument("--requests", type=int, default=8, help="requests per level (at least the concurrency)")
    p.add_argument("--engines", default="espeak-ng,cosyvoice3")
    p.add_argument("--cosyvoice3-dir", type=Path, default=None,
                   help="a CosyVoice3 model directory (default: the tests' tiny random-weight model)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.engines.split(","):
            if name == "espeak-ng":
                cfg, voice = TtsServiceConfig(engine="espeak-ng"), "alloy"
            else:
                cfg, voice = cosyvoice3_config(args, Path(tmp))
            rows += asyncio.run(bench_engine(name, cfg, voice, args))
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))


if __name__ == "__main__":
    main()
