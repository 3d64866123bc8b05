#!/usr/bin/env python3
"""ASR throughput: requests/s and real-time factor of the faster-whisper worker (tiny.en).

Measured side by side in one run, on one machine:
- http: the real ASR app (make_app with the engine), served in this process on a local port,
  driven with multipart POSTs to /v1/audio/transcriptions;
- in-process: the same engine's transcribe() called directly (what HTTP costs on top);
- serial: an engine whose worker decodes one request at a time (max_batch 1), at the
  batching concurrency, and the same with one serial worker per core (--workers 2).

RTF here is wall time over audio time for the whole run (0.1 = ten seconds of audio per
second). The load generator shares the machine with the worker.

    python benchmarks/asr_throughput.py --requests 32 --concurrency 1,8,32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import numpy as np
from aiohttp import web

from utils.audio import MODEL_SAMPLE_RATE, read_wav, resample
from web_demo.server.app import LIFECYCLE, make_app
from web_demo.server.config import AsrServiceConfig, HttpConfig, WorkerConfig
from web_demo.server.engines.base import TranscriptionRequest
from web_demo.server.engines.local import WorkerAsrEngine

ROOT = Path(__file__).resolve().parent.parent
BATCH_CONCURRENCY = 8  # where batched and serial, and HTTP and in-process, are compared
HTTP_TARGET = 0.9
BATCH_TARGET = 2.0
# Long enough for 32 requests queued behind one serial worker on a loaded machine.
WORKERS = WorkerConfig(request_timeout_s=300.0, hang_timeout_s=300.0)


@dataclass
class Row:
    mode: str
    max_batch: int
    workers: int
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    requests_per_s: float
    rtf: float
    p50_ms: float
    p99_ms: float


async def run_level(send: Callable[[], Awaitable[None]], *, mode: str, max_batch: int, workers: int,
                    requests: int, concurrency: int, audio_s: float) -> Row:
    """`requests` calls of `send`, at most `concurrency` at a time."""
    latencies: list[float] = []
    errors: list[str] = []
    remaining = iter(range(requests))

    async def client() -> None:
        for _ in remaining:  # a shared iterator: each request is taken once
            started = time.perf_counter()
            try:
                await send()
            except Exception as exc:  # counted and shown, never hidden
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    if errors:
        print(f"  {len(errors)} errors, e.g. {errors[0]}")
    ms = np.array(latencies or [float("nan")]) * 1000
    return Row(mode, max_batch, workers, concurrency, requests, len(errors), round(wall, 2),
               requests_per_s=round(len(latencies) / wall, 2),
               rtf=round(wall / (len(latencies) * audio_s), 3) if latencies else float("inf"),
               p50_ms=round(float(np.percentile(ms, 50)), 1), p99_ms=round(float(np.percentile(ms, 99)), 1))


def engine(max_batch: int, workers: int = 1) -> WorkerAsrEngine:
    return WorkerAsrEngine(name="whisper-tiny.en", init_kwargs={"max_batch": max_batch},
                           devices=["cpu"] * workers, cfg=WORKERS)


def direct(asr: WorkerAsrEngine, pcm_16k: np.ndarray) -> Callable[[], Awaitable[None]]:
    async def send() -> None:
        await asr.transcribe(TranscriptionRequest(pcm_16k, language="en"))
    return send


def over_http(http: aiohttp.ClientSession, url: str, wav: bytes) -> Callable[[], Awaitable[None]]:
    async def send() -> None:
        form = aiohttp.FormData()
        form.add_field("file", wav, filename="speech.wav", content_type="audio/wav")
        form.add_field("model", "whisper-1")
        form.add_field("language", "en")
        async with http.post(url, data=form) as response:
            body = await response.json()
            if response.status != 200 or not body.get("text"):
                raise RuntimeError(f"HTTP {response.status}: {str(body)[:120]}")
    return send


async def serve(asr: WorkerAsrEngine) -> tuple[web.AppRunner, int]:
    """The ASR app on a free local port; returns once its engine is ready."""
    app = make_app(HttpConfig(host="127.0.0.1", port=0, log_level="WARNING"), asr=asr,
                   asr_config=AsrServiceConfig())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    await asyncio.wait_for(app[LIFECYCLE].started.wait(), 300)
    if app[LIFECYCLE].failure:
        await runner.cleanup()
        raise RuntimeError(f"the ASR app failed to start: {app[LIFECYCLE].failure}")
    return runner, sock.getsockname()[1]


async def bench(args: argparse.Namespace, path: Path) -> list[Row]:
    pcm, rate = read_wav(path)
    pcm_16k = resample(pcm, rate, MODEL_SAMPLE_RATE)
    audio_s = len(pcm_16k) / MODEL_SAMPLE_RATE
    rows: list[Row] = []

    async def level(mode: str, send: Callable[[], Awaitable[None]], max_batch: int, workers: int,
                    concurrency: int) -> None:
        # Warm at this concurrency: the first batch of each size allocates its buffers.
        await asyncio.gather(*(send() for _ in range(min(concurrency, args.max_batch))))
        row = await run_level(send, mode=mode, max_batch=max_batch, workers=workers,
                              requests=args.requests, concurrency=concurrency, audio_s=audio_s)
        rows.append(row)
        print(f"  {mode:<11} max_batch={max_batch} workers={workers} c={concurrency:<3} "
              f"{row.requests_per_s} req/s", flush=True)

    batched = engine(args.max_batch)
    runner, port = await serve(batched)  # the app starts (and stops) the batched engine
    try:
        url = f"http://127.0.0.1:{port}/v1/audio/transcriptions"
        wav = path.read_bytes()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            for c in args.concurrency:  # interleaved, so that both see the same machine load
                await level("http", over_http(http, url, wav), args.max_batch, 1, c)
                await level("in-process", direct(batched, pcm_16k), args.max_batch, 1, c)
    finally:
        await runner.cleanup()
    for workers in (1, args.workers):
        serial = engine(1, workers)
        await serial.start()
        try:
            await level("in-process", direct(serial, pcm_16k), 1, workers, BATCH_CONCURRENCY)
        finally:
            await serial.aclose()
    return rows


def ratios(rows: list[Row], max_batch: int, workers: int) -> dict[str, float | None]:
    def rate(mode: str, batch: int, n_workers: int = 1) -> float | None:
        found = [r.requests_per_s for r in rows if (r.mode, r.max_batch, r.workers, r.concurrency)
                 == (mode, batch, n_workers, BATCH_CONCURRENCY)]
        return found[0] if found else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a and b else None

    return {"http_over_in_process": ratio(rate("http", max_batch), rate("in-process", max_batch)),
            "batched_over_serial": ratio(rate("in-process", max_batch), rate("in-process", 1)),
            f"serial_{workers}_workers_over_1": ratio(rate("in-process", 1, workers),
                                                      rate("in-process", 1))}


def print_table(rows: list[Row], ratios: dict[str, float | None]) -> None:
    print(f"\n{'mode':<11} {'batch':>5} {'wrk':>3} {'conc':>4} {'req':>4} {'err':>3} {'wall s':>7} "
          f"{'req/s':>6} {'RTF':>6} {'p50 ms':>7} {'p99 ms':>7}")
    for r in rows:
        print(f"{r.mode:<11} {r.max_batch:>5} {r.workers:>3} {r.concurrency:>4} {r.requests:>4} "
              f"{r.errors:>3} {r.wall_s:>7} {r.requests_per_s:>6} {r.rtf:>6} {r.p50_ms:>7} {r.p99_ms:>7}")
    print(f"\nat concurrency {BATCH_CONCURRENCY}:")
    targets = {"http_over_in_process": HTTP_TARGET, "batched_over_serial": BATCH_TARGET}
    for name, value in ratios.items():
        target = targets.get(name)
        verdict = "" if target is None or value is None else (
            f" (target >= {target}x: {'met' if value >= target else 'NOT met'})")
        print(f"  {name}: {value}x{verdict}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=32, help="requests per level")
    p.add_argument("--concurrency", default="1,8,32",
                   help="comma list of concurrent clients (http and in-process)")
    p.add_argument("--audio", default="fox", help="a tests/fixtures/speech name or a WAV path")
    p.add_argument("--max-batch", type=int, default=8, help="the batched worker's max_batch")
    p.add_argument("--workers", type=int, default=2, help="serial workers for the last row")
    p.add_argument("--json", type=Path, default=None, help="also write the results here "
                   "(benchmarks/results/ is gitignored)")
    args = p.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    path = Path(args.audio)
    if not path.exists():
        path = ROOT / "tests" / "fixtures" / "speech" / f"{args.audio}.wav"
    rows = asyncio.run(bench(args, path))
    found = ratios(rows, args.max_batch, args.workers)
    pcm, rate = read_wav(path)
    print(f"audio: {path} ({len(pcm) / rate:.2f} s)")
    print_table(rows, found)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"audio": str(path), "rows": [asdict(r) for r in rows],
                                         "ratios": found}, indent=2))


if __name__ == "__main__":
    main()
