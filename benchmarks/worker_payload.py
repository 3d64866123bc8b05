#!/usr/bin/env python3
"""Do big worker payloads stall other sessions' audio? Reply-frame gaps with and without.

One server process holds N loopback /api/chat sessions and a worker subprocess; in the
"loaded" run, senders push 4 MB requests (about 62 s of 16 kHz float32 audio, an upload
to transcribe) through the worker pipe back to back while the sessions receive their
real-time-paced replies. Pickling and pipe writes happen in the supervisor's writer
thread, so the event loop, and with it every session's audio, should not notice.

    python benchmarks/worker_payload.py --sessions 8 --payload-mb 4 --senders 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from utils.audio import WIRE_SAMPLE_RATE, read_wav, resample
from utils.opus import encode_browser_pages
from web_demo.chat_client import ChatClient
from web_demo.server.app import LIFECYCLE, make_app
from web_demo.server.config import ChatConfig, HttpConfig, WorkerConfig
from web_demo.server.engines.loopback import LoopbackEngine
from web_demo.server.workers.supervisor import WorkerSupervisor

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Payload:
    pcm_16k: np.ndarray = field(repr=False)  # float32 [T]


class PayloadHandler:
    """Answers each payload with its size: the cost measured is the transfer, not a model."""

    def info(self) -> dict[str, Any]:
        return {"model": "payload-size", "device": "cpu"}

    def handle(self, request: Payload) -> Iterator[int]:
        yield int(request.pcm_16k.nbytes)


async def send_payloads(worker: WorkerSupervisor, payload: Payload, stop: asyncio.Event,
                        sent: list[float]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await worker.call(payload)
        sent.append(time.perf_counter() - started)


async def one_session(url: str, pages: list[bytes], turns: int, gaps_ms: list[float]) -> None:
    async with await ChatClient.connect(url, decode=False) as chat:
        for _ in range(turns):
            reply = await chat.ask(pages, timeout=60)
            gaps_ms.extend(gap * 1000 for gap in reply.audio_gaps_s)


async def run(a: argparse.Namespace, pages: list[bytes], loaded: bool) -> dict[str, Any]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = make_app(HttpConfig(host="127.0.0.1", port=port), s2s=LoopbackEngine(),
                   chat=ChatConfig(max_sessions=a.sessions))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await app[LIFECYCLE].started.wait()
    worker = WorkerSupervisor(name="payload", handler="worker_payload:PayloadHandler",
                              cfg=WorkerConfig(request_timeout_s=120))
    await worker.start()
    payload = Payload(np.random.default_rng(0).standard_normal(a.payload_mb * 2**18).astype(np.float32))
    stop, sent, gaps = asyncio.Event(), [], []
    senders = [asyncio.create_task(send_payloads(worker, payload, stop, sent))
               for _ in range(a.senders if loaded else 0)]
    try:
        url = f"ws://127.0.0.1:{port}/api/chat"
        await asyncio.gather(*(one_session(url, pages, a.turns, gaps) for _ in range(a.sessions)))
    finally:
        stop.set()
        await asyncio.gather(*senders)
        await worker.aclose()
        await runner.cleanup()
    g = np.array(gaps)
    return {"condition": f"{a.payload_mb} MB payloads x{a.senders}" if loaded else "no payloads",
            "sessions": a.sessions, "frames": len(g), "payloads": len(sent),
            "payload_mb_per_s": round(len(sent) * a.payload_mb / max(sum(sent) / max(a.senders, 1), 1e-9), 1)
            if sent else 0.0,
            "gap_p50_ms": round(float(np.percentile(g, 50)), 1),
            "gap_p99_ms": round(float(np.percentile(g, 99)), 1),
            "gap_max_ms": round(float(g.max()), 1)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--turns", type=int, default=2)
    p.add_argument("--payload-mb", type=int, default=4)
    p.add_argument("--senders", type=int, default=2, help="concurrent payload streams")
    p.add_argument("--wav", type=Path, default=ROOT / "tests/fixtures/speech/fox.wav")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/worker_payload.json")
    a = p.parse_args(argv)
    pcm, rate = read_wav(a.wav)
    pages = encode_browser_pages(resample(pcm, rate, WIRE_SAMPLE_RATE))
    rows = [asyncio.run(run(a, pages, loaded)) for loaded in (False, True)]
    print(f"\nreply-frame gaps of {a.sessions} loopback sessions (40 ms frames, paced), "
          f"{os.cpu_count()} cores, server, worker and clients on one machine")
    cols = list(rows[0])
    print(" | ".join(f"{c:>20}" for c in cols))
    for row in rows:
        print(" | ".join(f"{row[c]!s:>20}" for c in cols))
    ratio = rows[1]["gap_p99_ms"] / rows[0]["gap_p99_ms"]
    print(f"\np99 gap loaded / unloaded: {ratio:.2f}x")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
