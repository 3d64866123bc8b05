"""The ASR service built from a models.json registry: remote engines (fake vLLM servers) and a
real local faster-whisper worker as their fallback, behind /v1/audio/transcriptions,
/stream/v1/asr and /health: degraded at start, failover, recovery by the probe, and a remote
without a fallback answering 503 in the one error body."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import FormData

from tests.fake_openai_asr import FakeOpenAIAsr
from tests.fakes import FAST, wait_until
from tests.helpers import FIXTURES, speech_file
from utils.audio import read_wav, wav_bytes
from web_demo.server.app import ENGINES, LIFECYCLE, make_app
from web_demo.server.config import AsrServiceConfig, HttpConfig
from web_demo.server.engines.asr_registry import load_registry
from web_demo.server.engines.asr_service import build_registry_models

pytestmark = pytest.mark.slow
FOX = speech_file("fox", "wav")


def upload(model: str, language: str = "en", audio: bytes = FOX) -> FormData:
    form = FormData()
    form.add_field("file", audio, filename="audio.wav")
    form.add_field("model", model)
    form.add_field("language", language)
    return form


def model_status(app: Any, model_id: str) -> str:
    return str(app[ENGINES]["asr"].health()["models"][model_id]["status"])


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeOpenAIAsr, FakeOpenAIAsr]]:
    qwen, whisper = FakeOpenAIAsr(model="Qwen/Qwen3-ASR-1.7B", text="from qwen3"), FakeOpenAIAsr(
        model="whisper-1", text="from vllm whisper")
    await qwen.start()
    await whisper.start()
    await qwen.stop()  # its port is known, and nothing listens there yet
    yield qwen, whisper
    await qwen.stop()
    await whisper.stop()


async def registry_service(aiohttp_client: Any, tmp_path: Path, qwen: FakeOpenAIAsr,
                           whisper: FakeOpenAIAsr) -> tuple[Any, Any]:
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"models": {
        "qwen3-asr-1.7b": {"name": "Qwen3-ASR-1.7B", "engine": "qwen3", "default": True,
                           "models": {"offline": "Qwen/Qwen3-ASR-1.7B"},
                           "extra_kwargs": {"vllm_host": "127.0.0.1", "vllm_port": qwen.port,
                                            "timeout_s": 10},
                           "fallbacks": ["whisper-tiny"]},
        "whisper-tiny": {"engine": "faster-whisper", "models": {"offline": "whisper-tiny.en"},
                         "languages": ["en"]},
        "whisper-vllm": {"engine": "whisper", "extra_kwargs": {
            "vllm_host": "127.0.0.1", "vllm_port": whisper.port, "served_model_name": "whisper-1"}},
    }}))
    models = build_registry_models(load_registry(path, environ={}), AsrServiceConfig(), FAST,
                                   probe_interval_s=0.2)
    app = make_app(HttpConfig(), asr=models)
    client = await aiohttp_client(app)
    await asyncio.wait_for(app[LIFECYCLE].started.wait(), 60)
    return client, app


async def test_a_remote_down_at_start_fails_over_and_comes_back(aiohttp_client, tmp_path, fakes) -> None:
    qwen, whisper = fakes
    client, app = await registry_service(aiohttp_client, tmp_path, qwen, whisper)
    health = await client.get("/health")
    body = await health.json()
    assert health.status == 200 and body["status"] == "degraded" and body["model"] == "qwen3-asr-1.7b"
    assert body["models"]["qwen3-asr-1.7b"]["status"] == "degraded"
    assert body["models"]["whisper-vllm"]["status"] == "healthy"
    # the default model's vLLM is down: its fallback, the real tiny.en worker, answers
    answer = await (await client.post("/v1/audio/transcriptions", data=upload("qwen3-asr-1.7b"))).json()
    assert {"quick", "brown", "fox"} <= set(answer["text"].lower().replace(".", "").split())
    metrics = await (await client.get("/metrics")).text()  # the fallback's worker, inside a group
    assert 'fac_worker_alive{worker="whisper-tiny"} 1.0' in metrics
    await qwen.start()  # vLLM is up: the probe closes the breaker, requests go to it again
    await wait_until(lambda: model_status(app, "qwen3-asr-1.7b") == "healthy", timeout=10)
    answer = await (await client.post("/stream/v1/asr?model_id=qwen3-asr-1.7b", data=FOX)).json()
    assert answer["result"] == "from qwen3" and answer["model_id"] == "qwen3-asr-1.7b"
    sent = qwen.last("/v1/chat/completions")
    assert sent.body is not None and sent.body["model"] == "Qwen/Qwen3-ASR-1.7B"
    assert sent.audio_16k is not None and abs(len(sent.audio_16k) / 16000 - 2.965) < 0.01


async def test_a_remote_without_fallback_answers_503_then_recovers(aiohttp_client, tmp_path, fakes) -> None:
    qwen, whisper = fakes
    client, app = await registry_service(aiohttp_client, tmp_path, qwen, whisper)
    answer = await (await client.post("/v1/audio/transcriptions", data=upload("whisper-vllm"))).json()
    assert answer["text"] == "from vllm whisper"
    assert whisper.last("/v1/audio/transcriptions").fields["model"] == ["whisper-1"]
    await whisper.stop()
    response = await client.post("/v1/audio/transcriptions", data=upload("whisper-vllm"))
    body = await response.json()
    assert response.status == 503 and set(body["error"]) == {"message", "type", "param", "code"}
    assert response.headers["Retry-After"] == "5"  # about when the probe notices it is back
    assert "whisper-vllm" in body["error"]["message"]
    # the declared language list is enforced before any engine is called
    bad = await client.post("/v1/audio/transcriptions", data=upload("whisper-tiny", "de"))
    assert bad.status == 400 and (await bad.json())["error"]["param"] == "language"
    await whisper.start()
    await wait_until(lambda: model_status(app, "whisper-vllm") == "healthy", timeout=10)
    answer = await (await client.post("/v1/audio/transcriptions", data=upload("whisper-vllm"))).json()
    assert answer["text"] == "from vllm whisper"


async def test_long_audio_is_cut_at_silences_and_stitched(aiohttp_client, tmp_path, fakes) -> None:
    """45 s (the fox sentence three times, 12 s of silence after each) through the service's
    chunking: every sentence is heard, at its own time, past Whisper's 30 s window."""
    qwen, whisper = fakes
    client, app = await registry_service(aiohttp_client, tmp_path, qwen, whisper)
    chunked = app[ENGINES]["asr"].resolve("whisper-tiny").engine
    heard_s: list[float] = []  # what the worker was sent, request by request
    transcribe = chunked.inner.transcribe

    async def recording(request: Any) -> Any:
        heard_s.append(len(request.pcm_16k) / 16000)
        return await transcribe(request)

    chunked.inner.transcribe = recording
    fox, rate = read_wav(FIXTURES / "speech" / "fox.wav")
    gap = np.zeros(12 * rate, np.float32)
    long = np.concatenate([fox, gap, fox, gap, fox, gap])
    form = upload("whisper-tiny", audio=wav_bytes(long, rate))
    form.add_field("response_format", "verbose_json")
    response = await client.post("/v1/audio/transcriptions", data=form)
    body = await response.json()
    assert response.status == 200, body
    assert abs(body["duration"] - len(long) / rate) < 0.05
    assert body["text"].lower().count("fox") == 3, body["text"]
    starts = [s["start"] for s in body["segments"] if "fox" in s["text"].lower()]
    sentence_s = (len(fox) + len(gap)) / rate
    assert [round(s / sentence_s) for s in starts] == [0, 1, 2], starts  # each where it was said
    assert len(heard_s) >= 2 and max(heard_s) <= 30.0, heard_s  # in chunks Whisper can hear
