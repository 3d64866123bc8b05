"""The HTTP edge every service shares: error shape, API keys, health phases, metrics, logs."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes import FakeEngine
from tests.helpers import tone_pages
from web_demo.server.app import LIFECYCLE, make_app
from web_demo.server.config import ChatConfig, HttpConfig
from web_demo.server.errors import BadRequest, EngineBusy

ERROR_KEYS = {"message", "type", "param", "code"}


def assert_error(body: dict[str, Any], status: int, kind: str) -> None:
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    assert body["error"]["code"] == status and body["error"]["type"] == kind, body


async def make_client(aiohttp_client: Any, *, routes: dict[str, Any] | None = None,
                      engine: Any = None, **http: Any) -> Any:
    app = make_app(replace(HttpConfig(), **http), s2s=engine or FakeEngine(), chat=ChatConfig())
    for path, handler in (routes or {}).items():
        app.router.add_post(path, handler)
    client = await aiohttp_client(app)
    await asyncio.wait_for(app[LIFECYCLE].started.wait(), 10)
    return client


async def test_every_failure_has_the_one_error_shape(aiohttp_client) -> None:
    async def bad_voice(request: web.Request) -> web.Response:
        raise BadRequest("unknown voice 'x'", param="voice")

    async def busy(request: web.Request) -> web.Response:
        raise EngineBusy("worker queue full")

    async def crash(request: web.Request) -> web.Response:
        raise KeyError("bug")

    async def read_body(request: web.Request) -> web.Response:
        return web.json_response({"bytes": len(await request.read())})

    client = await make_client(aiohttp_client, routes={
        "/bad": bad_voice, "/busy": busy, "/crash": crash, "/upload": read_body})
    response = await client.post("/bad")
    body = await response.json()
    assert_error(body, 400, "invalid_request_error")
    assert body["error"]["param"] == "voice" and "unknown voice" in body["error"]["message"]
    response = await client.post("/busy")
    assert_error(await response.json(), 503, "engine_busy")
    assert response.headers["Retry-After"] == "1"
    response = await client.post("/crash")
    body = await response.json()
    assert_error(body, 500, "internal_error")
    assert "bug" not in body["error"]["message"]  # no internals leak to clients
    assert_error(await (await client.get("/no/such/route")).json(), 404, "not_found")
    assert_error(await (await client.post("/health")).json(), 405, "method_not_allowed")
    response = await client.post("/upload", data=b"x" * (2 * 1024 * 1024))  # over aiohttp's 1 MiB
    assert_error(await response.json(), 413, "payload_too_large")
    response = await client.get("/static/" + "a" * 8000)  # file name too long for the OS
    assert_error(await response.json(), 404, "not_found")
    response = await client.get("/static/../server/app.py")
    assert response.status == 404


async def test_api_key_guards_every_route_but_health_and_never_reaches_a_log(
        aiohttp_client, caplog) -> None:
    caplog.set_level(logging.DEBUG)

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    client = await make_client(aiohttp_client, routes={"/api/thing": ok}, api_key="s3cret-key")
    for method, path in (("GET", "/metrics"), ("POST", "/api/thing"), ("GET", "/api/chat"),
                         ("GET", "/no/such/route")):
        response = await client.request(method, path)
        assert response.status == 401, path
        assert_error(await response.json(), 401, "unauthorized")
        assert response.headers["WWW-Authenticate"] == "Bearer"
    wrong_scheme = await client.post("/api/thing", headers={"Authorization": "s3cret-key"})
    assert wrong_scheme.status == 401  # the Bearer scheme is required
    assert (await client.post("/api/thing?api_key=s3cret-key")).status == 401  # query: WebSockets only
    good = await client.post("/api/thing", headers={"Authorization": "Bearer s3cret-key"})
    assert good.status == 200 and good.headers["X-Request-Id"]
    ws = await client.ws_connect("/api/chat?api_key=s3cret-key")
    assert (await ws.receive(timeout=5)).data == b"\x00\x00\x00"
    await ws.close()
    assert (await client.get("/health")).status == 200
    assert (await client.get("/")).status == 200
    # aiohttp's raw access log is off in lifecycle.serve() (the e2e test reads a real log).
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name != "aiohttp.access")
    assert "s3cret-key" not in ours
    assert "path=/api/chat " in ours  # request lines are logged, without the query


async def test_health_says_loading_at_once_then_healthy(aiohttp_client) -> None:
    engine = FakeEngine(start_delay_s=1.0)
    app = make_app(HttpConfig(), s2s=engine, chat=ChatConfig())
    client = await aiohttp_client(app)
    response = await asyncio.wait_for(client.get("/health"), 0.5)  # answers while loading
    assert response.status == 503 and (await response.json())["status"] == "loading"
    ws = await client.ws_connect("/api/chat")
    refused = await ws.receive(timeout=5)
    assert refused.data[0] == 0x05 and b"loading" in refused.data
    assert (await ws.receive(timeout=5)).data == 1013
    await app[LIFECYCLE].started.wait()
    response = await client.get("/health")
    assert response.status == 200 and (await response.json())["status"] == "healthy"


async def test_engine_that_fails_to_start_makes_the_service_failed(aiohttp_client) -> None:
    class Broken(FakeEngine):
        async def start(self) -> None:
            raise RuntimeError("weights missing")

    app = make_app(HttpConfig(), s2s=Broken(), chat=ChatConfig())
    client = await aiohttp_client(app)
    await app[LIFECYCLE].started.wait()
    response = await client.get("/health")
    body = await response.json()
    assert response.status == 503 and body["status"] == "failed" and "weights missing" in body["error"]
    assert app[LIFECYCLE].stop_requested.is_set()  # main() exits non-zero


async def test_metrics_parse_and_move_with_traffic(chat_server) -> None:
    client, connect = await chat_server(FakeEngine(audio_s=0.4))

    async def scrape() -> dict[str, float]:
        text = await (await client.get("/metrics")).text()
        return {f"{s.name}{sorted(s.labels.items())}": s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    before = await scrape()
    chat = await connect()
    await chat.turn(tone_pages(0.6))
    await chat.receive_reply()
    await chat.ws.send_bytes(b"\x07")
    await chat.receive_for(0.2)
    await client.get("/no/such/route")
    after = await scrape()
    assert after["fac_turns_total[('outcome', 'completed')]"] == 1
    assert after["fac_first_audio_seconds_count[]"] == 1
    assert after["fac_sessions_active[]"] == 1
    assert after["fac_errors_total[('kind', 'protocol_error')]"] == 1
    assert after["fac_errors_total[('kind', 'not_found')]"] == 1
    key = ("fac_http_request_duration_seconds_count"
           "[('method', 'GET'), ('route', '/metrics'), ('status', '200')]")
    assert after[key] == before.get(key, 0) + 1


async def test_drain_lets_the_reply_finish_and_refuses_newcomers(chat_server) -> None:
    client, connect = await chat_server(FakeEngine(audio_s=2.0, step_delay_s=0.05))
    chat = await connect()
    await chat.turn(tone_pages(0.6))
    await chat.receive_until_audio()
    lifecycle = client.app[LIFECYCLE]
    drain = asyncio.create_task(lifecycle.drain(10.0))
    await asyncio.sleep(0.1)
    health = await client.get("/health")
    assert health.status == 503 and (await health.json())["status"] == "draining"
    newcomer = await client.ws_connect("/api/chat")
    assert b"shutting down" in (await newcomer.receive(timeout=5)).data
    assert (await newcomer.receive(timeout=5)).data == 1013
    reply = await chat.receive_reply()  # the reply in flight is sent whole
    assert reply.final is not None and reply.errors == []
    assert await asyncio.wait_for(drain, 5) is True


@pytest.mark.parametrize("seconds", [0.3])
async def test_drain_gives_up_after_its_timeout(chat_server, seconds: float) -> None:
    client, connect = await chat_server(FakeEngine(audio_s=20.0, step_delay_s=0.2))
    chat = await connect()
    await chat.turn(tone_pages(0.6))
    await chat.receive_until_audio()
    assert await client.app[LIFECYCLE].drain(seconds) is False


def test_log_redaction_masks_keys_from_any_logger() -> None:
    from web_demo.server.logs import RedactSecrets

    record = logging.LogRecord("aiohttp.access", logging.INFO, __file__, 1,
                               '"GET /api/chat?api_key=%s&extras=1" %s', ("hunter2", "Bearer abc.def"), None)
    RedactSecrets().filter(record)
    assert record.getMessage() == '"GET /api/chat?api_key=***&extras=1" Bearer ***'


def test_rate_limit_collapses_a_flood_into_a_count() -> None:
    from web_demo.server.logs import RateLimitFilter

    limit = RateLimitFilter(burst=5, window_s=3600)
    records = [logging.LogRecord("x", logging.INFO, __file__, 1, "bad frame: %s", (i,), None)
               for i in range(1000)]
    assert sum(limit.filter(r) for r in records) == 5


@pytest.mark.slow
async def test_a_worker_handlers_errors_reach_http_clients_by_kind(aiohttp_client) -> None:
    """Handler -> pipe -> supervisor -> route -> middleware: the kind survives every hop."""
    from tests.fakes import FAST, Reject, Sleep
    from web_demo.server.workers.supervisor import WorkerSupervisor

    worker = WorkerSupervisor(name="echo", handler="tests.fakes:EchoHandler",
                              cfg=replace(FAST, max_pending=1))
    await worker.start()
    try:
        async def reject(request: web.Request) -> web.Response:
            await worker.call(Reject(param="voice"))
            return web.json_response({})

        async def slow(request: web.Request) -> web.Response:
            return web.json_response({"chunks": await worker.call(Sleep(seconds=0.5, chunks=1))})

        client = await make_client(aiohttp_client, routes={"/reject": reject, "/slow": slow})
        body = await (await client.post("/reject")).json()
        assert_error(body, 400, "invalid_request_error")
        assert body["error"]["param"] == "voice" and "bad input on purpose" in body["error"]["message"]
        first = asyncio.create_task(client.post("/slow"))
        await asyncio.sleep(0.2)
        busy = await client.post("/slow")  # max_pending=1: refused at once, not queued
        assert_error(await busy.json(), 503, "engine_busy")
        assert int(busy.headers["Retry-After"]) >= 1
        assert (await (await first).json()) == {"chunks": [0]}
    finally:
        await worker.aclose()
