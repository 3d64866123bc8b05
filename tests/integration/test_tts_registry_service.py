"""The TTS models of a tts_models.json registry: a remote OpenAI speech server (the fake of
tests/fake_openai_tts.py) with a real espeak-ng worker as its fallback. Down at start ->
degraded and answered by the fallback; back -> the probe closes the breaker; a fault after the
first chunk and a BadRequest stay with the engine that had them; all down -> AllEnginesDown;
model ids and OpenAI's aliases; an engine shared by several models starts and stops once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.fake_openai_tts import SPEECH, FakeOpenAITts, Fault, tone_24k
from tests.fakes import FAST, wait_until
from web_demo.server.app import LIFECYCLE, make_app
from web_demo.server.config import HttpConfig, TtsServiceConfig
from web_demo.server.engines.base import PcmChunk, SynthesisRequest, TtsEngine
from web_demo.server.engines.failover import AllEnginesDown
from web_demo.server.engines.remote_asr import RemoteUnavailable
from web_demo.server.engines.tts_failover import FailoverTtsEngine
from web_demo.server.engines.tts_models import (
    GENERIC_ALIASES,
    SharedTtsEngine,
    TtsModels,
    build_tts_registry_models,
)
from web_demo.server.engines.tts_registry import load_tts_registry
from web_demo.server.errors import BadRequest, ModelNotFound

pytestmark = pytest.mark.slow
MODEL = "FunAudioLLM/Fun-CosyVoice3-0.5B-2512"  # what the fake serves
TEXT = "The quick brown fox jumps over the lazy dog."


def as_float(tone: np.ndarray) -> np.ndarray:
    return tone.astype(np.float32) / 32768


async def collect(engine: TtsEngine, text: str = TEXT) -> list[PcmChunk]:
    async with aclosing(engine.synthesize(SynthesisRequest(text=text))) as chunks:
        return [chunk async for chunk in chunks]


def joined(chunks: list[PcmChunk]) -> np.ndarray:
    return np.concatenate([c.pcm for c in chunks])


def group(models: TtsModels, model_id: str) -> FailoverTtsEngine:
    engine = models.resolve(model_id).engine
    assert isinstance(engine, FailoverTtsEngine)
    return engine


def breaker(models: TtsModels, model_id: str, member: int = 0) -> dict[str, Any]:
    report: dict[str, Any] = models.health()["models"][model_id]["engines"][member]
    return report


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeOpenAITts, FakeOpenAITts]]:
    """The primary's server (up) and the solo model's (down: its port known, nothing there)."""
    primary, solo = FakeOpenAITts(model=MODEL), FakeOpenAITts(model="solo-tts")
    await primary.start()
    await solo.start()
    await solo.stop()
    yield primary, solo
    await primary.stop()
    await solo.stop()


def registry_file(tmp_path: Path, primary: FakeOpenAITts, solo: FakeOpenAITts) -> Path:
    path = tmp_path / "tts_models.json"
    remote = {"vllm_host": "127.0.0.1", "vllm_port": primary.port, "voice": "alloy", "timeout_s": 2,
              "api_key_env": "FAKE_TTS_KEY"}
    path.write_text(json.dumps({"models": {
        "cosyvoice3-vllm": {"engine": "openai-speech", "default": True, "models": {"offline": MODEL},
                            "extra_kwargs": remote, "fallbacks": ["espeak-ng"]},
        "espeak-ng": {"engine": "espeak-ng"},
        "solo": {"engine": "openai-speech", "extra_kwargs": {
            "vllm_host": "127.0.0.1", "vllm_port": solo.port, "model": "solo-tts", "voice": "alloy",
            "timeout_s": 2}},
    }}), encoding="utf-8")
    return path


@pytest.fixture
async def models(tmp_path: Path, fakes: tuple[FakeOpenAITts, FakeOpenAITts]) -> AsyncIterator[TtsModels]:
    """The registry's models, built but not started (a test may stop the primary first)."""
    primary, solo = fakes
    built = build_tts_registry_models(load_tts_registry(registry_file(tmp_path, primary, solo), env={}),
                                      TtsServiceConfig(), FAST, probe_interval_s=0.2,
                                      env={"FAKE_TTS_KEY": "sk-fake"})
    yield built
    await built.aclose()


async def test_a_remote_down_at_start_fails_over_and_comes_back(models: TtsModels, fakes: Any) -> None:
    primary, _ = fakes
    await primary.stop()
    await models.start()
    health = models.health()
    assert health["status"] == "degraded" and health["model"] == "cosyvoice3-vllm"
    assert health["models"]["cosyvoice3-vllm"]["status"] == "degraded"
    assert health["models"]["cosyvoice3-vllm"]["serving"] == "espeak-ng"
    assert health["models"]["espeak-ng"]["alive"] and health["models"]["solo"]["status"] == "dead"
    assert health["workers"]["espeak-ng"]["alive"]  # the fallback's worker, for /metrics
    assert breaker(models, "cosyvoice3-vllm")["breaker"] == "open"
    # the remote is down: the default model (and its id) is answered by espeak-ng
    for engine in (models, models.resolve("cosyvoice3-vllm").engine):
        chunks = await collect(engine)
        assert {c.sample_rate for c in chunks} == {24_000} and len(joined(chunks)) > 24_000
    assert await models.speakers() == await models.resolve("espeak-ng").engine.speakers()
    assert "中文女" in await models.speakers()
    await primary.start()  # up again: the probe closes the breaker, requests go to it again
    await wait_until(lambda: models.health()["models"]["cosyvoice3-vllm"]["status"] == "healthy", timeout=10)
    np.testing.assert_allclose(joined(await collect(models)), as_float(tone_24k(TEXT)), atol=1e-6)
    sent = primary.last()
    assert sent.body["model"] == MODEL and sent.body["voice"] == "alloy"
    assert sent.authorization == "Bearer sk-fake"  # the key from extra_kwargs.api_key_env


async def test_unavailable_before_audio_fails_over_but_not_after_it(models: TtsModels, fakes: Any) -> None:
    primary, _ = fakes
    await models.start()
    assert models.health()["models"]["cosyvoice3-vllm"]["status"] == "healthy"
    primary.fault = Fault.ERROR_500  # before any audio: the fallback answers
    chunks = await collect(models)
    assert len(joined(chunks)) > 24_000 and primary.last().bytes_sent == 0
    assert breaker(models, "cosyvoice3-vllm")["failures"] == 1  # a 500 is a blip until the third
    primary.fault = Fault.DROP  # the connection is cut halfway through the audio
    got: list[PcmChunk] = []
    with pytest.raises(RemoteUnavailable, match="cut its answer short"):
        async with aclosing(models.synthesize(SynthesisRequest(text=TEXT))) as stream:
            async for chunk in stream:
                got.append(chunk)
    heard = joined(got)
    tone = as_float(tone_24k(TEXT))
    assert 0 < len(heard) < len(tone)  # what was heard is the remote's, and only the remote's
    np.testing.assert_allclose(heard, tone[:len(heard)], atol=1e-6)
    assert breaker(models, "cosyvoice3-vllm")["failures"] == 2
    primary.fault = None
    await collect(models)
    assert breaker(models, "cosyvoice3-vllm")["failures"] == 0  # a whole answer closes it again


async def test_a_bad_request_never_fails_over(models: TtsModels, fakes: Any) -> None:
    primary, _ = fakes
    await models.start()
    primary.fault = Fault.BAD_REQUEST
    with pytest.raises(BadRequest, match="fake says no") as caught:
        await collect(models)
    assert caught.value.http_status == 400
    report = breaker(models, "cosyvoice3-vllm")
    assert (report["breaker"], report["failures"]) == ("closed", 0)
    assert models.health()["models"]["cosyvoice3-vllm"]["serving"] == "cosyvoice3-vllm"


async def test_closing_early_closes_the_remote_stream_at_once(models: TtsModels, fakes: Any) -> None:
    primary, _ = fakes
    primary.chunk_delay_s = 0.2  # 5 pieces: a second of streaming
    await models.start()
    async with aclosing(models.synthesize(SynthesisRequest(text=TEXT))) as stream:
        first = await anext(stream)
    assert first.pcm.size
    sent = primary.last()
    await asyncio.wait_for(sent.ended.wait(), 1.0)  # long before the answer would have ended
    assert sent.outcome == "disconnected"


async def test_all_engines_down_is_a_503_with_retry_after(models: TtsModels, fakes: Any) -> None:
    await models.start()
    solo = models.resolve("solo").engine
    with pytest.raises(AllEnginesDown, match="no TTS engine of solo can serve now: solo") as caught:
        await collect(solo)
    assert caught.value.http_status == 503 and caught.value.retry_after_s == 5
    with pytest.raises(AllEnginesDown):
        await solo.speakers()
    assert models.health()["status"] == "degraded"  # the other models still answer


async def test_model_ids_and_openai_aliases(models: TtsModels) -> None:
    assert models.ids == ["cosyvoice3-vllm", "espeak-ng", "solo"]
    assert (models.name, models.default, models.sample_rate) == ("cosyvoice3-vllm", "cosyvoice3-vllm", 24_000)
    default = models.resolve("cosyvoice3-vllm")
    for asked in (None, *GENERIC_ALIASES):
        assert models.resolve(asked) == default and models.resolve(asked).id == "cosyvoice3-vllm"
    model_id, engine = models.resolve("espeak-ng")
    assert model_id == "espeak-ng" and isinstance(engine, SharedTtsEngine)
    with pytest.raises(ModelNotFound, match="'tts-2' is not served here; models: cosyvoice3-vllm, "
                       "espeak-ng, solo, tts-1") as caught:
        models.resolve("tts-2", param="model_id")
    assert caught.value.http_status == 404 and caught.value.param == "model_id"
    assert TtsModels.single(models) is models
    assert TtsModels.single(engine).ids == ["espeak-ng"]


async def test_an_engine_shared_by_two_models_starts_and_stops_once(models: TtsModels) -> None:
    shared = models.resolve("espeak-ng").engine
    assert isinstance(shared, SharedTtsEngine)
    assert shared in group(models, "cosyvoice3-vllm").engines  # the same object as the fallback
    calls: list[str] = []
    inner = shared.engine

    def counted(name: str) -> None:
        method = getattr(inner, name)

        async def wrapper() -> None:
            calls.append(name)
            await method()
        setattr(inner, name, wrapper)

    counted("start")
    counted("aclose")
    await models.start()
    assert calls == ["start"]
    worker_pid = models.health()["workers"]["espeak-ng"]["pid"]
    assert worker_pid is not None
    await models.aclose()
    assert calls == ["start", "aclose"]
    assert not inner.health()["alive"]


async def test_the_app_serves_the_models_degraded_and_answers_from_the_fallback(
        aiohttp_client: Any, models: TtsModels, fakes: Any) -> None:
    primary, _ = fakes
    await primary.stop()
    app = make_app(HttpConfig(), tts=models)
    client = await aiohttp_client(app)
    await asyncio.wait_for(app[LIFECYCLE].started.wait(), 60)
    health = await client.get("/health")
    body = await health.json()
    assert health.status == 200 and body["status"] == "degraded" and body["model"] == "cosyvoice3-vllm"
    response = await client.post(SPEECH, json={"model": "tts-1", "input": TEXT, "voice": "alloy",
                                               "response_format": "pcm"})
    assert response.status == 200 and len(await response.read()) > 48_000  # espeak-ng's speech
    metrics = await (await client.get("/metrics")).text()
    assert 'fac_worker_alive{worker="espeak-ng"} 1.0' in metrics
