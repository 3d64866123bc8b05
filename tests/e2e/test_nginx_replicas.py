"""Two S2S replicas behind nginx (least_conn, WebSocket upgrade for /api/chat, max_fails and
fail_timeout), the shape of the docker compose replicas profile: sessions spread over both,
a replica killed mid-turn fails only its own sessions, and new sessions go to the live one.

nginx runs from a config of this test's own in a temporary directory (Debian's nginx,
scripts/setup_nginx.sh), so it needs no system directory and no service."""

from __future__ import annotations

import asyncio
import functools
import json
import os
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

CONF = """\
{user}
worker_processes 1;
error_log {tmp}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    upstream s2s {{
        zone s2s 64k;   # one least_conn count for every worker
        least_conn;     # a WebSocket session is one long connection: count them
        server 127.0.0.1:{port_a} max_fails=1 fail_timeout=30s;
        server 127.0.0.1:{port_b} max_fails=1 fail_timeout=30s;
    }}
    server {{
        listen 127.0.0.1:{port};
        location /api/chat {{
            proxy_pass http://s2s;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            proxy_connect_timeout 2s;
            proxy_next_upstream error timeout;   # a dead replica: the next one
        }}
        location / {{
            proxy_pass http://s2s;
        }}
    }}
}}
"""


@dataclass
class Nginx:
    port: int
    process: subprocess.Popen[bytes]
    error_log: Path


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
    if NGINX is None:
        pytest.skip("nginx is not installed: scripts/setup_nginx.sh")
    conf_dir = tmp_path / "nginx"
    conf_dir.mkdir()
    port = free_port()
    conf = conf_dir / "nginx.conf"
    conf.write_text(CONF.format(user="user root;" if os.geteuid() == 0 else "", tmp=conf_dir, port=port,
                                port_a=replicas[0].port, port_b=replicas[1].port))
    process = subprocess.Popen(
        [NGINX, "-p", str(conf_dir), "-e", str(conf_dir / "error.log"), "-c", str(conf),
         "-g", f"daemon off; pid {conf_dir}/nginx.pid;"],
        stdout=subprocess.DEVNULL, stderr=(conf_dir / "stderr.log").open("wb"))
    proxy = Nginx(port, process, conf_dir / "error.log")
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"nginx exited: {(conf_dir / 'stderr.log').read_text()}"
                                   f"{proxy.error_log.read_text() if proxy.error_log.exists() else ''}")
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
