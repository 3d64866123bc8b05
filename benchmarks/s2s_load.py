#!/usr/bin/env python3
"""Load test of /api/chat: N concurrent browser-like clients against the loopback engine.

Each client replays pre-encoded Ogg/Opus speech at real-time pace (20 ms frames, 2 per page,
as the browser sends), ends the turn, and receives the reply, for several turns. Reported
per N: end-of-turn to first-audio latency p50/p99, p99 gap between reply audio frames,
errors, and the CPU seconds of the server (its process and children, e.g. the Opus codec),
of its main process alone (server_loop_cpu_s: the event loop, which one core must carry)
and of the load generator, and the server's CPU seconds per session-minute (a minute of
conversation at real time; a figure that does not depend on the load generator sharing the
machine); then the largest N with p99 gap < 100 ms. The server runs as a subprocess on the
same machine (start it yourself and pass --url to measure another deployment; its CPU is then
not reported). --profile samples the server with
py-spy (`pip install py-spy`) and prints its top functions.

    python benchmarks/s2s_load.py --sessions 10,50,100,150 --turns 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import uvloop

from utils.audio import WIRE_SAMPLE_RATE, read_wav, resample
from utils.opus import encode_browser_pages
from web_demo.chat_client import PAGE_S, ChatClient, ChatError

ROOT = Path(__file__).resolve().parent.parent

GAP_TARGET_MS = 100.0


@dataclass
class ClientStats:
    first_audio_ms: list[float] = field(default_factory=list)
    gaps_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its live descendants (the server's Opus codec)."""
    total = process_cpu_s(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread (or child) that just ended
            for child in (task / "children").read_text().split():
                total += process_tree_cpu_s(int(child))
    return total


async def one_client(http: aiohttp.ClientSession, url: str, pages: list[bytes], turns: int,
                     stats: ClientStats, start_delay_s: float) -> None:
    await asyncio.sleep(start_delay_s)  # stagger connections like real users
    try:
        # decode=False: the load generator shares the machine, so it skips decoding replies;
        # compress=15: the handshake offers permessage-deflate, as every browser's does
        async with await ChatClient.connect(url, http=http, decode=False, compress=15,
                                            timeout_s=30) as chat:
            for _ in range(turns):
                reply = await chat.ask(pages, realtime=True, timeout=60)
                if reply.first_audio_s is not None:
                    stats.first_audio_ms.append(reply.first_audio_s * 1000)
                stats.gaps_ms.extend(gap * 1000 for gap in reply.audio_gaps_s)
                stats.errors.extend(reply.errors)
    except (ChatError, aiohttp.ClientError, TimeoutError, OSError) as exc:
        stats.errors.append(f"{type(exc).__name__}: {exc}")


async def run_level(url: str, n: int, pages: list[bytes], turns: int,
                    server_pid: int | None = None) -> dict:
    stats = [ClientStats() for _ in range(n)]
    cpu_before = None if server_pid is None else process_tree_cpu_s(server_pid)
    loop_before = None if server_pid is None else process_cpu_s(server_pid)
    loadgen_before = process_cpu_s(os.getpid())
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        started = time.perf_counter()
        await asyncio.gather(*(one_client(http, url, pages, turns, s, start_delay_s=i * 2.0 / n)
                               for i, s in enumerate(stats)))
        wall = time.perf_counter() - started
    cpu = None if server_pid is None or cpu_before is None else process_tree_cpu_s(server_pid) - cpu_before
    loop_cpu = None if server_pid is None or loop_before is None else process_cpu_s(server_pid) - loop_before
    loadgen_cpu = process_cpu_s(os.getpid()) - loadgen_before
    # A session-minute is a minute of conversation at real time (user speech + reply audio),
    # so the figure does not grow when an overloaded server stretches every session's wall time.
    first = np.array([x for s in stats for x in s.first_audio_ms])
    session_min = len(first) * 2 * len(pages) * PAGE_S / 60
    gaps = np.array([x for s in stats for x in s.gaps_ms])
    errors = [e for s in stats for e in s.errors]

    def pct(a: np.ndarray, q: float) -> float | None:
        return round(float(np.percentile(a, q)), 1) if len(a) else None

    return {"sessions": n, "turns": len(first), "first_audio_p50_ms": pct(first, 50),
            "first_audio_p99_ms": pct(first, 99), "gap_p50_ms": pct(gaps, 50),
            "gap_p99_ms": pct(gaps, 99), "gap_max_ms": pct(gaps, 100), "errors": len(errors),
            "error_examples": sorted(set(errors))[:3], "wall_s": round(wall, 1),
            "server_cpu_s": None if cpu is None else round(cpu, 1),
            "server_loop_cpu_s": None if loop_cpu is None else round(loop_cpu, 1),
            "loadgen_cpu_s": round(loadgen_cpu, 1),
            "cpu_s_per_session_min": None if cpu is None or not session_min else round(cpu / session_min, 3)}


def start_server(max_sessions: int, send_ahead: float, root: Path = ROOT,
                 extra_args: tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes], str]:
    """Starts the loopback server of the checkout at `root` (e.g. an older commit's worktree)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "web_demo.server.server", "--engine", "loopback", "--host",
         "127.0.0.1", "--port", str(port), "--max-sessions", str(max_sessions),
         "--send-ahead", str(send_ahead), "--log-level", "WARNING", *extra_args],
        cwd=root)  # python -m puts the cwd first on sys.path: that checkout's code runs
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return process, f"ws://127.0.0.1:{port}/api/chat"
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("server did not start")


def print_table(rows: list[dict]) -> None:
    cols = ["sessions", "turns", "first_audio_p50_ms", "first_audio_p99_ms", "gap_p50_ms",
            "gap_p99_ms", "gap_max_ms", "errors", "wall_s", "server_cpu_s", "server_loop_cpu_s",
            "loadgen_cpu_s", "cpu_s_per_session_min"]
    print(" | ".join(cols))
    for row in rows:
        print(" | ".join(f"{row[c]!s:>{len(c)}}" for c in cols))


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling the server into collapsed stacks (one "frame;frame;... count" a line)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # the venv's own bin is not on PATH when the benchmark runs as .venv/bin/python
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        sys.exit("--profile needs py-spy: pip install py-spy")
    return subprocess.Popen([py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
                             "--output", str(out), "--nonblocking"], stdout=subprocess.DEVNULL)


def print_top_functions(collapsed: Path, top: int = 25) -> None:
    """The functions the server spent its samples in: self (the innermost frame) and total."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        samples += int(count)
        own[frames[-1]] += int(count)
        for f in set(frames):
            total[f] += int(count)
    print(f"\nserver profile: {samples} samples (py-spy, 200 Hz); top functions by own time")
    for name, n in own.most_common(top):
        print(f"{100 * n / samples:6.1f}% own {100 * total[name] / samples:6.1f}% total  {name}")
    print("\ntop functions by total time (own time included)")
    for name, n in total.most_common(top):
        print(f"{100 * n / samples:6.1f}% total  {name}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", default="10,50,100,150", help="comma-separated N values")
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--wav", type=Path, default=ROOT / "tests/fixtures/speech/fox.wav")
    p.add_argument("--url", help="ws://host:port/api/chat of a running loopback server")
    p.add_argument("--server-root", type=Path, default=ROOT,
                   help="checkout whose server to start, e.g. `git worktree add /tmp/old REF`")
    p.add_argument("--send-ahead", type=float, default=0.5)
    p.add_argument("--server-args", default="", help='more server flags, e.g. "--opus-codec inline"')
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/s2s_load.json")
    p.add_argument("--profile", type=Path, help="py-spy the server into this collapsed-stack file")
    a = p.parse_args(argv)
    levels = [int(x) for x in a.sessions.split(",")]
    pcm, rate = read_wav(a.wav)
    pages = encode_browser_pages(resample(pcm, rate, WIRE_SAMPLE_RATE))
    process = profiler = None
    url = a.url
    if url is None:
        process, url = start_server(max(levels), a.send_ahead, a.server_root,
                                    tuple(shlex.split(a.server_args)))
    if a.profile is not None and process is not None:
        profiler = start_profiler(process.pid, a.profile)
    try:
        rows = []
        for n in levels:
            # uvloop, as the server runs: the clients' own loop overhead would show up as gaps
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                rows.append(runner.run(run_level(url, n, pages, a.turns, process.pid if process else None)))
            print(f"N={n}: {rows[-1]}", file=sys.stderr)
    finally:
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(30)
        if process is not None:
            process.terminate()
            process.wait(10)
    print(f"\n/api/chat load, loopback engine, {os.cpu_count()} cores, load generator on the "
          f"same machine, {len(pages) * PAGE_S:.1f} s turns x {a.turns}, server from {a.server_root} "
          f"{a.server_args}")
    print_table(rows)
    if profiler is not None and a.profile is not None and a.profile.exists():
        print_top_functions(a.profile)
    ok = [r["sessions"] for r in rows if r["gap_p99_ms"] is not None
          and r["gap_p99_ms"] < GAP_TARGET_MS and r["errors"] == 0]
    print(f"\nlargest N with p99 gap < {GAP_TARGET_MS:.0f} ms and no errors: {max(ok) if ok else 'none'}")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"rows": rows, "largest_ok": max(ok) if ok else None}, indent=2))


if __name__ == "__main__":
    main()
