"""The ASR service app from make_app: field mapping, limits and errors against a fake engine,
then the real faster-whisper worker (Whisper tiny.en) through /api/transcribe and through the
`openai` SDK for every response format and for streaming.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import openai
import pytest
from aiohttp import FormData, web

from tests.fakes import FakeAsr
from tests.helpers import FIXTURES, speech_file
from utils.audio import wav_bytes
from web_demo.server.app import LIFECYCLE, make_app
from web_demo.server.config import AsrServiceConfig, HttpConfig
from web_demo.server.engines.local import WorkerAsrEngine

KEY = "asr-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITS = AsrServiceConfig(max_upload_mb=1.0, max_audio_s=10.0)
ERROR_KEYS = {"message", "type", "param", "code"}
FOX = speech_file("fox", "wav")
FOX_WORDS = {"quick", "brown", "fox", "lazy", "dog"}


def assert_error(body: dict[str, Any], status: int, kind: str, param: str | None) -> None:
    assert set(body["error"]) == ERROR_KEYS, body
    error = body["error"]
    assert (error["code"], error["type"], error["param"]) == (status, kind, param), body


def form(fields: dict[str, str] | None = None, *, file: bytes | None = FOX, field: str = "audio",
         filename: str = "test.wav") -> FormData:
    data = FormData()
    if file is not None:
        data.add_field(field, file, filename=filename, content_type="application/octet-stream")
    for name, value in (fields or {}).items():
        data.add_field(name, value)
    return data


async def fake_service(aiohttp_client: Any, engine: FakeAsr | None = None) -> tuple[Any, FakeAsr]:
    engine = engine or FakeAsr(text="The quick brown fox.")
    app = make_app(HttpConfig(api_key=KEY), asr=engine, asr_config=LIMITS)
    client = await aiohttp_client(app, headers=AUTH)
    await asyncio.wait_for(app[LIFECYCLE].started.wait(), 10)
    return client, engine


# ---- against a fake engine: what reaches the engine, and every error --------------------

async def test_plan_fields_reach_the_engine_and_the_answer_keeps_the_clients_language(aiohttp_client) -> None:
    client, engine = await fake_service(aiohttp_client)
    response = await client.post("/api/transcribe", data=form(
        {"language": "中文", "hotwords": "Fun-Audio-Chat，语音助手, 热词"}))
    assert response.status == 200
    assert await response.json() == {"text": "The quick brown fox.", "language": "中文", "success": True}
    assert '"中文"' in await response.text()  # not \\u-escaped: curl users read it
    heard = engine.requests[-1]
    assert heard.language == "zh" and heard.hotwords == ("Fun-Audio-Chat", "语音助手", "热词")
    assert heard.pcm_16k.dtype == np.float32 and abs(len(heard.pcm_16k) / 16000 - 2.965) < 0.01
    for asked, code, answered in [(None, "zh", "中文"), ("粤语", "yue", "粤语"), ("ja", "ja", "ja"),
                                  ("自动", None, "英文"), ("auto", None, "en")]:
        response = await client.post("/api/transcribe", data=form(
            {"language": asked} if asked is not None else {}))
        assert (await response.json())["language"] == answered, asked
        assert engine.requests[-1].language == code, asked


async def test_openai_fields_reach_the_engine(aiohttp_client) -> None:
    client, engine = await fake_service(aiohttp_client)
    response = await client.post("/v1/audio/transcriptions", data=form({
        "model": "fake-asr", "language": "en", "prompt": "A fox.", "temperature": "0.4",
        "response_format": "verbose_json", "timestamp_granularities[]": "word", "hotwords": "fox,dog"},
        field="file"))
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["language"] == "english" and body["text"] == "The quick brown fox." and "words" in body
    heard = engine.requests[-1]
    assert (heard.language, heard.prompt, heard.temperature, heard.word_timestamps, heard.hotwords) == (
        "en", "A fox.", 0.4, True, ("fox", "dog"))


@pytest.mark.parametrize("fmt", ["flac", "mp3", "ogg", "webm", "m4a"])
async def test_compressed_uploads_reach_the_engine_as_16k_pcm(aiohttp_client, fmt: str) -> None:
    client, engine = await fake_service(aiohttp_client)
    response = await client.post("/api/transcribe", data=form(file=speech_file("fox", fmt),
                                                              filename=f"fox.{fmt}"))
    assert response.status == 200, await response.text()
    assert abs(len(engine.requests[-1].pcm_16k) / 16000 - 2.965) < 0.1


async def test_bad_input_gets_a_4xx_with_the_one_error_body(aiohttp_client) -> None:
    client, _ = await fake_service(aiohttp_client)
    twelve_seconds = wav_bytes(np.zeros(12 * 16000, np.float32), 16000)  # 384 KB, under the byte limit
    plan_cases = [
        (form(file=b""), 400, "invalid_request_error", "audio", "empty"),
        (form(file=FOX[:30]), 400, "invalid_request_error", "audio", "could not decode"),
        (form(file=b"not audio at all " * 64), 400, "invalid_request_error", "audio", "could not decode"),
        (form(field="file"), 400, "invalid_request_error", "audio", "'audio'"),
        (form({"language": "克林贡语"}), 400, "invalid_request_error", "language", "unknown language"),
        (form(file=b"\0" * 1_500_000), 413, "payload_too_large", "audio", "at most"),  # cut while read
        (form(file=b"\0" * 3_000_000), 413, "payload_too_large", "audio", "at most"),  # by Content-Length
        (form(file=twelve_seconds), 413, "payload_too_large", "audio", "12.0 s long; the limit is 10 s"),
        (b'{"audio": "..."}', 400, "invalid_request_error", "audio", "multipart/form-data"),
    ]
    for data, status, kind, param, words in plan_cases:
        response = await client.post("/api/transcribe", data=data)
        body = await response.json()
        assert response.status == status, body
        assert_error(body, status, kind, param)
        assert body["success"] is False and words in body["error"]["message"], body
    openai_cases = [
        ({"model": "whisper-9"}, FOX, "file", 404, "model_not_found", "model"),
        ({}, FOX, "file", 400, "invalid_request_error", "model"),
        ({"model": "whisper-1"}, FOX, "audio", 400, "invalid_request_error", "file"),
        ({"model": "whisper-1"}, b"", "file", 400, "invalid_request_error", "file"),
        ({"model": "whisper-1", "language": "xx"}, FOX, "file", 400, "invalid_request_error", "language"),
        ({"model": "whisper-1", "response_format": "xml"}, FOX, "file", 400, "invalid_request_error",
         "response_format"),
        ({"model": "whisper-1", "temperature": "hot"}, FOX, "file", 400, "invalid_request_error",
         "temperature"),
    ]
    for fields, file, field, status, kind, param in openai_cases:
        response = await client.post("/v1/audio/transcriptions", data=form(fields, file=file, field=field))
        body = await response.json()
        assert response.status == status, (fields, body)
        assert_error(body, status, kind, param)
        assert "success" not in body  # OpenAI's body, unchanged


async def test_health_models_and_the_api_key(aiohttp_client) -> None:
    client, _ = await fake_service(aiohttp_client)
    health = await (await client.get("/health", headers={"Authorization": ""})).json()
    assert (health["status"], health["model"], health["device"]) == ("healthy", "fake-asr", "cpu")
    listed = await (await client.get("/v1/models")).json()
    assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == ["fake-asr"]
    assert (await (await client.get("/v1/models/whisper-1")).json())["id"] == "whisper-1"
    assert_error(await (await client.get("/v1/models/nope")).json(), 404, "model_not_found", "model")
    for path in ("/v1/models", "/api/transcribe", "/v1/audio/transcriptions"):
        wrong = {"Authorization": "Bearer wrong"}
        response = await (client.get(path, headers=wrong) if path == "/v1/models"
                          else client.post(path, headers=wrong, data=form()))
        body = await response.json()
        assert response.status == 401 and body["error"]["type"] == "unauthorized", path
        assert body.get("success") is (False if path == "/api/transcribe" else None)


# ---- the real faster-whisper worker, shared by the module ------------------------------

@dataclass
class LiveService:
    url: str
    app: web.Application


@pytest.fixture(scope="module")
def whisper_service() -> Iterator[LiveService]:
    """The real app and worker on a real port, run by a thread's event loop for the module."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="asr-service", daemon=True)
    thread.start()

    async def start() -> tuple[web.AppRunner, web.Application]:
        engine = WorkerAsrEngine(name="whisper-tiny.en", init_kwargs={"model_dir": "whisper-tiny.en"},
                                 devices=["cpu"])
        app = make_app(HttpConfig(api_key=KEY), asr=engine, asr_config=LIMITS)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        await asyncio.wait_for(app[LIFECYCLE].started.wait(), 120)
        return runner, app

    runner, app = asyncio.run_coroutine_threadsafe(start(), loop).result(180)
    port = runner.addresses[0][1]
    try:
        yield LiveService(f"http://127.0.0.1:{port}", app)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="module")
def sdk(whisper_service: LiveService) -> openai.OpenAI:
    return openai.OpenAI(base_url=whisper_service.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def words_of(text: str) -> set[str]:
    return {w.strip(".,!?").lower() for w in text.split()}


def heard(text: str, words: set[str]) -> bool:
    return words <= words_of(text)


@pytest.mark.slow
async def test_plan_endpoint_transcribes_the_speech_fixtures(whisper_service: LiveService) -> None:
    import aiohttp

    expected = {"fox": FOX_WORDS, "weather": {"weather", "paris", "tomorrow"},
                "hello": {"hello", "name", "alice"}}
    async with aiohttp.ClientSession(headers=AUTH) as session:
        for name, words in expected.items():
            data = form({"language": "英文", "hotwords": "Fun-Audio-Chat,语音助手"},
                        file=(FIXTURES / "speech" / f"{name}.wav").read_bytes())
            async with session.post(whisper_service.url + "/api/transcribe", data=data) as response:
                body = await response.json()
            assert response.status == 200 and body["success"] is True and body["language"] == "英文"
            assert heard(body["text"], words), body
        # The plan's default language is 中文, which tiny.en cannot do: a clear 400, never a guess.
        async with session.post(whisper_service.url + "/api/transcribe", data=form()) as response:
            body = await response.json()
        assert response.status == 400 and body["success"] is False, body
        assert_error(body, 400, "invalid_request_error", "language")
        assert "'中文'" in body["error"]["message"] and "only en" in body["error"]["message"]


@pytest.mark.slow
def test_openai_sdk_every_response_format(sdk: openai.OpenAI) -> None:
    def create(**options: Any) -> Any:
        return sdk.audio.transcriptions.create(model="whisper-1", file=("fox.wav", FOX), **options)

    json_result = create()
    assert heard(json_result.text, FOX_WORDS) and json_result.usage.seconds == 3
    assert heard(create(response_format="text"), FOX_WORDS)
    verbose = create(response_format="verbose_json", timestamp_granularities=["word", "segment"],
                     language="en")
    assert verbose.language == "english" and abs(verbose.duration - 2.965) < 0.01
    assert verbose.segments and verbose.segments[0].start == 0.0 and verbose.segments[-1].end <= 2.965
    assert {w.word.strip(".").lower() for w in verbose.words} >= FOX_WORDS
    assert all(a.start <= b.start for a, b in zip(verbose.words, verbose.words[1:]))
    srt = create(response_format="srt")
    assert srt.startswith("1\n00:00:00,000 --> 00:00:0") and heard(srt, FOX_WORDS)
    vtt = create(response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> ") and heard(vtt, FOX_WORDS)
    # The served id works as well as the generic alias.
    served_id = sdk.audio.transcriptions.create(model="whisper-tiny.en",
                                                file=("fox.webm", speech_file("fox", "webm")))
    assert heard(served_id.text, FOX_WORDS)
    assert [m.id for m in sdk.models.list()] == ["whisper-tiny.en"]


@pytest.mark.slow
def test_openai_sdk_stream(sdk: openai.OpenAI) -> None:
    events = list(sdk.audio.transcriptions.create(
        model="whisper-1", file=("weather.m4a", speech_file("weather", "m4a")), stream=True))
    assert [e.type for e in events[:-1]] == ["transcript.text.delta"] * (len(events) - 1) and events[:-1]
    assert events[-1].type == "transcript.text.done"
    assert "".join(e.delta for e in events[:-1]) == events[-1].text
    assert heard(events[-1].text, {"weather", "paris", "tomorrow"})


@pytest.mark.slow
def test_openai_sdk_sees_errors_as_api_errors(sdk: openai.OpenAI, whisper_service: LiveService) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        sdk.audio.transcriptions.create(model="whisper-large-v9", file=("fox.wav", FOX))
    assert not_found.value.body["type"] == "model_not_found" and not_found.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as unsupported:
        sdk.audio.transcriptions.create(model="whisper-1", file=("fox.wav", FOX), language="zh")
    assert unsupported.value.body["param"] == "language"
    with pytest.raises(openai.BadRequestError) as truncated:
        sdk.audio.transcriptions.create(model="whisper-1", file=("fox.wav", FOX[:40]))
    assert "could not decode" in truncated.value.body["message"]
    metrics = openai.OpenAI(base_url=whisper_service.url, api_key=KEY).get("/metrics", cast_to=str)
    assert 'fac_asr_audio_seconds_total{model="whisper-tiny.en"}' in metrics
    assert 'fac_worker_alive{worker="whisper-tiny.en"} 1.0' in metrics
