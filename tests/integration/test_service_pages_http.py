"""Each service's `/`: the ASR and TTS servers serve their own test page, a server with an S2S
engine keeps the S2S demo; the pages and their files are public, nothing outside the client
directory is served."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FakeAsr, FakeEngine, ToneTts
from web_demo.server.app import LIFECYCLE, make_app
from web_demo.server.config import CLIENT_DIR, ChatConfig, HttpConfig

KEY = "page-test-key"
ASSET = re.compile(r'(?:src|href)="(/static/[^"]+)"')
TRAVERSALS = ("/static/../server/app.py", "/static/asr/../../server/app.py",
              "/static/%2e%2e/server/app.py", "/static/..%2fserver%2fapp.py",
              "/static/asr/%2e%2e/%2e%2e/server/app.py", "/static//etc/passwd",
              "/static/%2fetc%2fpasswd", "/static/asr/..%5c..%5cserver%5capp.py")


async def client_for(aiohttp_client: Any, **engines: Any) -> Any:
    if "s2s" in engines:
        engines["chat"] = ChatConfig()
    app = make_app(HttpConfig(api_key=KEY), **engines)
    client = await aiohttp_client(app)  # no Authorization header: the pages are public
    await asyncio.wait_for(app[LIFECYCLE].started.wait(), 10)
    return client


async def raw_get(client: Any, path: str) -> tuple[int, bytes]:
    """GET with the path on the wire as written (a client library would normalize its dots)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def page_and_assets(client: Any) -> str:
    """`/` with no API key, and every /static/ file it names."""
    response = await client.get("/")
    assert response.status == 200 and response.content_type == "text/html"
    html = await response.text()
    assets = ASSET.findall(html)
    for path in assets:
        asset = await client.get(path)
        assert asset.status == 200, path
        assert (await asset.read()) == (CLIENT_DIR / path.removeprefix("/static/")).read_bytes()
    return html


@pytest.mark.parametrize(("engines", "title", "script"), [
    ({"asr": "asr"}, "Speech to text", "/static/asr/asr.js"),
    ({"tts": "tts"}, "Text to speech", "/static/tts/tts.js"),
    ({"asr": "asr", "tts": "tts"}, "Speech to text", "/static/asr/asr.js"),  # one page: the ASR one
])
async def test_a_service_serves_its_own_page_without_a_key(aiohttp_client, engines: dict[str, str],
                                                           title: str, script: str) -> None:
    built = {role: FakeAsr() if role == "asr" else ToneTts() for role in engines}
    client = await client_for(aiohttp_client, **built)
    html = await page_and_assets(client)
    assert f"<h1>{title}</h1>" in html and f'src="{script}"' in html
    assert 'href="/static/pages.css"' in html
    assert (await client.get("/v1/models")).status == 401  # the API it calls keeps its key
    authorized = await client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert authorized.status == 200


async def test_a_server_with_an_s2s_engine_keeps_the_s2s_demo_at_the_root(aiohttp_client) -> None:
    for engines in ({"s2s": FakeEngine()}, {"s2s": FakeEngine(), "asr": FakeAsr(), "tts": ToneTts()}):
        client = await client_for(aiohttp_client, **engines)
        response = await client.get("/")
        assert response.status == 200
        assert await response.read() == (CLIENT_DIR / "index.html").read_bytes()
        # the service pages stay reachable under /static/
        assert (await client.get("/static/asr/index.html")).status == 200


async def test_without_the_page_the_root_says_what_the_server_is(aiohttp_client, tmp_path: Path) -> None:
    for role, engine, says in (("asr", FakeAsr(), "ASR server"), ("tts", ToneTts(), "TTS server")):
        app = make_app(HttpConfig(), static_dir=tmp_path, **{role: engine})
        client = await aiohttp_client(app)
        response = await client.get("/")
        assert response.status == 200 and says in await response.text()


@pytest.mark.parametrize("role", ["asr", "tts", "s2s"])
async def test_static_paths_never_leave_the_client_directory(aiohttp_client, role: str) -> None:
    engine = {"asr": FakeAsr, "tts": ToneTts, "s2s": FakeEngine}[role]()
    client = await client_for(aiohttp_client, **{role: engine})
    for path in TRAVERSALS:
        status, body = await raw_get(client, path)
        assert status == 404 and b'"not_found"' in body, (path, status, body[:200])
        assert b"make_app" not in body and b"root:" not in body
    assert (await client.get("/static/asr/")).status == 404  # a directory is not a file
