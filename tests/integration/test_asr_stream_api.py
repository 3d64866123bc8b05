"""The vLLM ASR plan's raw-body endpoint, POST /stream/v1/asr?model_id=..., and its health URL,
against fake engines: the body as the audio (a file or headerless PCM), the query options,
model choice by id, a registry's language list, and every bad input as the one error body.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import numpy as np

from tests.fakes import FakeAsr, wait_until
from tests.helpers import speech_file
from web_demo.server.app import LIFECYCLE, make_app
from web_demo.server.config import AsrServiceConfig, HttpConfig
from web_demo.server.engines.asr_models import AsrModels
from web_demo.server.lifecycle import bind, serve

KEY = "stream-asr-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
FOX = speech_file("fox", "wav")


async def service(aiohttp_client: Any) -> tuple[Any, FakeAsr, FakeAsr]:
    nano, whisper = FakeAsr(name="nano", text="你好世界"), FakeAsr(name="whisper", text="Hello.")
    models = AsrModels({"fun-asr-nano": nano, "whisper-base": whisper}, default="fun-asr-nano",
                       languages={"fun-asr-nano": ("zh", "en", "ja")})
    app = make_app(HttpConfig(api_key=KEY), asr=models,
                   asr_config=AsrServiceConfig(max_upload_mb=1.0, max_audio_s=10.0))
    client = await aiohttp_client(app, headers=AUTH)
    await asyncio.wait_for(app[LIFECYCLE].started.wait(), 10)
    return client, nano, whisper


async def test_the_plans_curl_shape_a_wav_body_and_a_model_id(aiohttp_client) -> None:
    client, nano, whisper = await service(aiohttp_client)
    response = await client.post("/stream/v1/asr?model_id=whisper-base", data=FOX)
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["result"] == "Hello." and body["status"] == 20000000 and body["message"] == "SUCCESS"
    assert body["model_id"] == "whisper-base" and body["task_id"] == response.headers["X-Request-Id"]
    assert len(whisper.requests) == 1 and not nano.requests
    assert abs(len(whisper.requests[0].pcm_16k) / 16000 - 2.965) < 0.01
    response = await client.post("/stream/v1/asr", data=FOX)  # no model_id: the default model
    assert (await response.json())["result"] == "你好世界" and len(nano.requests) == 1


async def test_headerless_pcm_at_its_rate_and_the_query_options(aiohttp_client) -> None:
    client, nano, _ = await service(aiohttp_client)
    tone = (0.3 * np.sin(np.arange(8000) / 8000 * 2 * np.pi * 440) * 32767).astype("<i2")
    response = await client.post("/stream/v1/asr?format=pcm&sample_rate=8000&language=中文"
                                 "&hotwords=Fun-Audio-Chat,语音助手", data=tone.tobytes())
    assert response.status == 200, await response.text()
    assert (await response.json())["language"] == "中文"
    heard = nano.requests[-1]
    assert len(heard.pcm_16k) == 16000  # 1 s at 8 kHz, resampled to 16 kHz
    assert heard.language == "zh" and heard.hotwords == ("Fun-Audio-Chat", "语音助手")
    assert abs(float(np.abs(heard.pcm_16k).max()) - 0.3) < 0.02


async def test_bad_requests_get_the_one_error_body(aiohttp_client) -> None:
    client, nano, _ = await service(aiohttp_client)
    cases = [
        ("/stream/v1/asr?model_id=nope", FOX, 404, "model_id"),
        ("/stream/v1/asr", b"", 400, "body"),
        ("/stream/v1/asr", b"not audio at all" * 10, 400, "body"),
        ("/stream/v1/asr?format=pcm", b"\x00" * 3, 400, "body"),  # odd byte count
        ("/stream/v1/asr?format=pcm&sample_rate=12345", b"\x00" * 4, 400, "sample_rate"),
        ("/stream/v1/asr?format=exe", FOX, 400, "format"),
        ("/stream/v1/asr?language=klingon", FOX, 400, "language"),
        ("/stream/v1/asr?language=fr", FOX, 400, "language"),  # not in the model's languages
        ("/stream/v1/asr", b"\x00" * (1024 * 1024 + 1), 413, "body"),
        ("/stream/v1/asr?format=pcm&sample_rate=16000", b"\x00" * (2 * 16000 * 11), 413, "body"),
    ]
    for path, data, status, param in cases:
        response = await client.post(path, data=data)
        body = await response.json()
        assert response.status == status, (path, body)
        assert set(body) == {"error"} and body["error"]["param"] == param, (path, body)
    assert not nano.requests  # nothing bad reached the engine


async def test_the_plans_health_url_needs_no_key_and_the_endpoint_does(aiohttp_client) -> None:
    client, _, _ = await service(aiohttp_client)
    health = await client.get("/stream/v1/asr/health", headers={"Authorization": ""})
    body = await health.json()
    assert health.status == 200 and body["status"] == "healthy" and body["model"] == "fun-asr-nano"
    assert set(body["models"]) == {"fun-asr-nano", "whisper-base"}
    refused = await client.post("/stream/v1/asr", data=FOX, headers={"Authorization": "Bearer wrong"})
    assert refused.status == 401 and (await refused.json())["error"]["code"] == 401


async def test_a_body_larger_than_it_says_is_cut_off(aiohttp_client) -> None:
    """A chunked body has no Content-Length: the limit holds while reading."""
    client, nano, _ = await service(aiohttp_client)

    async def chunks() -> Any:
        for _ in range(20):
            yield b"\x00" * (64 * 1024)

    response = await client.post("/stream/v1/asr?format=pcm", data=chunks())
    assert response.status == 413 and not nano.requests
    assert (await response.json())["error"]["param"] == "body"



async def test_a_client_that_hangs_up_cancels_its_transcription() -> None:
    """Through serve(), the production runner: the engine call of a request whose client went
    away is cancelled, not finished for nobody (aiohttp's default is to finish it)."""
    started, cancelled = asyncio.Event(), asyncio.Event()

    class SlowAsr(FakeAsr):
        async def transcribe(self, request: Any) -> Any:
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise

    app = make_app(HttpConfig(), asr=SlowAsr(name="slow"))
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = asyncio.create_task(serve(app, sock, lifecycle=app[LIFECYCLE], drain_timeout_s=1))
    try:
        await asyncio.wait_for(app[LIFECYCLE].started.wait(), 10)
        async with aiohttp.ClientSession() as session:
            post = asyncio.create_task(session.post(f"http://127.0.0.1:{port}/stream/v1/asr", data=FOX))
            await asyncio.wait_for(started.wait(), 5)
            post.cancel()  # the client hangs up mid-request
            await asyncio.wait_for(cancelled.wait(), 5)
        await wait_until(lambda: app[LIFECYCLE].busy == 0)
    finally:
        app[LIFECYCLE].stop_requested.set()
        assert await asyncio.wait_for(server, 10) == 0
