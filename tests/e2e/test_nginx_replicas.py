"""Two S2S replicas behind nginx (least_conn, WebSocket upgrade for /api/chat, max_fails and
fail_timeout), the shape of the docker compose replicas profile: sessions spread over both,
a replica killed mid-turn fails only its own sessions, and new sessions go to the live one.

nginx runs deploy/nginx.conf, the config we ship, from a copy in a temporary directory with
the two replicas in its s2s_upstream.conf (Debian's nginx, scripts/setup_nginx.sh), so it needs
no system directory and no service."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import RunningServer, free_port, start_server, stop_server
from tests.helpers import tone_pages
from web_demo.chat_client import ChatClient, ChatError

pytestmark = pytest.mark.slow

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
SHIPPED_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"
# Passive health checks as the kill-a-replica assertions need them: the first connect refused
# by the dead replica marks it down (max_fails=1), and it stays down for the rest of the test.
UPSTREAM_LINE = "server 127.0.0.1:{port} max_fails=1 fail_timeout=30s;\n"


@dataclass
class Nginx:
    port: int
    process: subprocess.Popen[bytes]
    error_log: Path  # nginx's stderr: the shipped conf logs there (`error_log stderr warn;`)


def health(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
        body: dict[str, Any] = json.loads(r.read())
    return body


def active_sessions(server: RunningServer) -> int:
    return int(health(server.port)["sessions"]["active"])


def total_is(replicas: list[RunningServer], want: int) -> bool:
    return sum(map(active_sessions, replicas)) == want


async def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Polls another process's /health (off the event loop) until `predicate` holds."""
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[list[RunningServer]]:
    servers = []
    try:
        for name in ("a", "b"):
            servers.append(start_server(["--engine", "loopback"], tmp_path / f"replica_{name}.log"))
        yield servers
    finally:
        for server in servers:
            if server.process.poll() is None:
                stop_server(server)
            else:
                server.process.wait()


@pytest.fixture
def nginx(tmp_path: Path, replicas: list[RunningServer]) -> Iterator[Nginx]:
    """deploy/nginx.conf as shipped, run the way its header says: a copy in a directory of its
    own with an s2s_upstream.conf beside it, `-p DIR`, only its `listen 8080;` changed.

    No `user root;` even as root: the workers (then `nobody`) need no file of the prefix here.
    The logs are the master's stdout and stderr, inherited, and no body in this test is big
    enough to be buffered to a temp file."""
    if NGINX is None:
        pytest.skip("nginx is not installed: scripts/setup_nginx.sh")
    conf_dir = tmp_path / "nginx"
    conf_dir.mkdir()
    port = free_port()
    conf = conf_dir / "nginx.conf"
    text, n = re.subn(r"^(\s*)listen 8080;$", rf"\1listen 127.0.0.1:{port};",
                      SHIPPED_CONF.read_text(encoding="utf-8"), flags=re.M)
    assert n == 1, "deploy/nginx.conf should have exactly one `listen 8080;` line"
    conf.write_text(text, encoding="utf-8")
    (conf_dir / "s2s_upstream.conf").write_text(
        "".join(UPSTREAM_LINE.format(port=server.port) for server in replicas), encoding="utf-8")
    error_log = conf_dir / "error.log"
    with (conf_dir / "access.log").open("wb") as stdout, error_log.open("wb") as stderr:
        process = subprocess.Popen([NGINX, "-p", str(conf_dir), "-c", str(conf), "-g", "daemon off;"],
                                   stdout=stdout, stderr=stderr)
    proxy = Nginx(port, process, error_log)
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"nginx exited: {error_log.read_text()}")
            try:
                health(port)
                break
            except (OSError, urllib.error.HTTPError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield proxy
    finally:
        process.send_signal(signal.SIGTERM)  # fast shutdown: the master stops its workers
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def get(port: int, path: str) -> tuple[int, bytes]:
    """A plain HTTP GET (no upgrade): its status and body; an error status is returned too."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return int(r.status), bytes(r.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def test_plain_http_goes_through_nginx(nginx: Nginx, replicas: list[RunningServer]) -> None:
    assert get(nginx.port, "/lb-health") == (200, b"ok\n")  # nginx's own
    for _ in range(4):  # location / proxies /health to a replica (least_conn: either one)
        status, body = get(nginx.port, "/health")
        assert status == 200, body
        assert "active" in json.loads(body)["sessions"], body


async def turn(chat: ChatClient, seconds: float, *, realtime: bool = False) -> str:
    """One turn of a tone; returns the reply's final text (ChatError etc. propagate)."""
    reply = await chat.ask(tone_pages(seconds), realtime=realtime, timeout=20)
    assert not reply.errors, reply.errors
    assert reply.audio_pages, "a loopback reply carries the turn's audio"
    assert reply.final_text is not None
    return reply.final_text


async def test_sessions_spread_and_survive_a_replica_killed_mid_turn(
        nginx: Nginx, replicas: list[RunningServer]) -> None:
    url = f"ws://127.0.0.1:{nginx.port}/api/chat"
    a, b = replicas
    sessions: list[ChatClient] = []
    home: list[RunningServer] = []  # the replica each session landed on
    try:
        # Six sessions, opened one after another through nginx; the replica whose active
        # count went up is the session's home.
        for i in range(6):
            before = {s.port: active_sessions(s) for s in replicas}
            sessions.append(await ChatClient.connect(url, timeout_s=10))
            await wait_for(functools.partial(total_is, replicas, sum(before.values()) + 1),
                           f"session {i} on a replica")
            home.append(next(s for s in replicas if active_sessions(s) == before[s.port] + 1))
        assert active_sessions(a) == 3 and active_sessions(b) == 3  # least_conn spread them

        finals = await asyncio.gather(*(turn(chat, 1.0) for chat in sessions))
        assert all(f.startswith("[loopback] ") for f in finals), finals

        # The next turn of every session, sent in real time; replica A is SIGKILLed mid-turn.
        async def next_turn(chat: ChatClient) -> str | BaseException:
            try:
                return await turn(chat, 2.0, realtime=True)
            except (ChatError, ConnectionError, TimeoutError, AssertionError) as exc:
                return exc

        running = asyncio.gather(*(next_turn(chat) for chat in sessions))
        await asyncio.sleep(0.8)
        a.process.send_signal(signal.SIGKILL)
        outcomes = await running
        a.process.wait(timeout=10)
        for outcome, server in zip(outcomes, home, strict=True):
            if server is a:  # its socket closed under it: a failed send or a closed socket
                assert isinstance(outcome, (ChatError, ConnectionError)), outcome
            else:
                assert outcome == "[loopback] 2.0 s of your audio", outcome

        # The sessions on B keep working; new sessions through nginx go to B, the live one.
        survivors = [chat for chat, server in zip(sessions, home, strict=True) if server is b]
        finals = await asyncio.gather(*(turn(chat, 0.5) for chat in survivors))
        assert all(f.startswith("[loopback]") for f in finals), finals
        fresh = [await ChatClient.connect(url, timeout_s=10) for _ in range(3)]
        sessions.extend(fresh)
        await wait_for(lambda: active_sessions(b) == 6, "the 3 new sessions on replica B")
        finals = await asyncio.gather(*(turn(chat, 0.5) for chat in fresh))
        assert all(f.startswith("[loopback]") for f in finals), finals
    finally:
        await asyncio.gather(*(chat.aclose() for chat in sessions), return_exceptions=True)
    # The first new session was tried on dead A, refused, marked down (max_fails=1), sent to B.
    log = nginx.error_log.read_text()
    assert 'connect() failed (111: Connection refused) while connecting to upstream' in log
    assert 'upstream server temporarily disabled' in log and f"127.0.0.1:{a.port}/api/chat" in log
