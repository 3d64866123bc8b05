"""SIGTERM mid-reply against the real server process (cascade engine, real workers)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import start_server
from tests.helpers import speech_24k
from utils.opus import encode_browser_pages
from web_demo.chat_client import ChatClient

pytestmark = pytest.mark.slow
KEY = "drain-test-key-7f3a"


def get_health(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return "zombie" not in status.read()
    except FileNotFoundError:
        return False


async def test_sigterm_lets_the_reply_finish_refuses_newcomers_and_stops_workers(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    server = start_server(["--engine", "cascade", "--asr-language", "en", "--drain-timeout", "30",
                           "--api-key", KEY], log)
    try:
        _, health = get_health(server.port)
        worker_pids = [w["pid"] for w in health["workers"].values()]
        assert len(worker_pids) == 2 and all(map(running, worker_pids))
        url = f"ws://127.0.0.1:{server.port}/api/chat"
        async with await ChatClient.connect(url, api_key=KEY) as chat:
            await chat.turn(encode_browser_pages(speech_24k("fox")))
            first = await chat.receive_until_audio(timeout=60)
            os.kill(server.process.pid, signal.SIGTERM)
            signalled = time.monotonic()
            await asyncio.sleep(0.3)
            status, health = get_health(server.port)
            assert status == 503 and health["status"] == "draining"
            newcomer = await ChatClient.connect(url, api_key=KEY, handshake=False)
            refusal = await newcomer.ws.receive(timeout=5)
            assert refusal.data[0] == 0x05 and b"shutting down" in refusal.data
            assert (await newcomer.ws.receive(timeout=5)).data == 1013
            await newcomer.aclose()
            rest = await chat.receive_reply(timeout=30)  # the reply in flight is sent whole
            assert rest.final is not None and rest.errors == [] and first.errors == []
            assert "quick brown fox" in rest.final.lower()
            closing = await chat.ws.receive(timeout=10)
            assert chat.ws.close_code == 1001, closing
        assert server.process.wait(timeout=30) == 0
        assert time.monotonic() - signalled < 30
        for pid in worker_pids:
            assert not running(pid), f"worker {pid} outlived the server"
    finally:
        if server.process.poll() is None:
            server.process.kill()
    text = log.read_text()
    assert KEY not in text  # the key reached the server only in ?api_key=, never the log
    assert "draining" in text
