"""The TTS service app from make_app with its real workers, each on a real port for the module:
the espeak-ng stand-in (as build_tts_service_engine picks it when there is no model) and our
CosyVoice3 runtime over the tiny random-weight model (tests/cosyvoice3_tts_tiny.py).

Driven through /api/synthesize (JSON and multipart), the `openai` SDK on /v1/audio/speech in
every response format, /api/speakers, /health, /metrics and /v1/models. Seeded CosyVoice3
requests are compared sample for sample: across prompt sources, against a saved speaker,
alone versus batched, and against the runtime itself run in this process.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import shutil
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import openai
import pytest
import soundfile as sf
from aiohttp import FormData, web

from tests.cosyvoice3_tts_tiny import tiny_tts_dir
from tests.tts_golden import PROMPT_WAV
from utils.audio import resample
from web_demo.server.app import LIFECYCLE, make_app
from web_demo.server.audio_input import decode_native
from web_demo.server.audio_output import pcm16
from web_demo.server.config import HttpConfig, TtsServiceConfig, WorkerConfig
from web_demo.server.engines.tts_service import build_tts_service_engine

pytestmark = pytest.mark.slow

KEY = "tts-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ERROR_KEYS = {"message", "type", "param", "code"}
RATE = 24000
FOX = "The quick brown fox jumps over the lazy dog."
ALICE = "Hello, my name is Alice and I live in Paris."  # what Whisper tiny.en hears in both voices
ALICE_WORDS = {"hello", "name", "alice", "live", "paris"}
PROMPT = PROMPT_WAV.read_bytes()
PROMPT_B64 = base64.b64encode(PROMPT).decode()
PROMPT_TEXT = "希望你以后能够做的比我还好呦。"
HELLO = "你好，我是语音助手。"
LONG_CV3 = "这是一个很长的句子，用来测试客户端断开以后合成会停下。" * 40  # a minute or more on the tiny model
MAX_TEXT = 2000


# ---- the services, one of each per module, on a thread's event loop -----------------------

@dataclass
class LiveService:
    url: str
    app: web.Application
    cfg: TtsServiceConfig

    def worker_pid(self) -> int:
        return int(self.health()["pid"])

    def health(self) -> dict[str, Any]:
        """/health's report, whatever its status (blocking: call it in a thread from async code)."""
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as error:
            return dict(json.loads(error.read()))


@dataclass(frozen=True)
class Dirs:
    model: Path
    prompts: Path  # --prompt-dir: reference.wav, and links that lead out of it
    speakers: Path  # --speakers-dir
    outside: Path  # a usable prompt that must never be read: secret.wav


def live_service(cfg: TtsServiceConfig, name: str) -> Iterator[LiveService]:
    """The real app and engine on a real port, run the way lifecycle.serve runs it
    (handler_cancellation: a client that hangs up cancels its handler)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=name, daemon=True)
    thread.start()

    async def start() -> tuple[web.AppRunner, web.Application]:
        engine = build_tts_service_engine(cfg, WorkerConfig())
        app = make_app(HttpConfig(api_key=KEY), tts=engine, tts_config=cfg)
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        await asyncio.wait_for(app[LIFECYCLE].started.wait(), 120)
        return runner, app

    runner, app = asyncio.run_coroutine_threadsafe(start(), loop).result(180)
    try:
        yield LiveService(f"http://127.0.0.1:{runner.addresses[0][1]}", app, cfg)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> Dirs:
    root = tmp_path_factory.mktemp("tts")
    d = Dirs(tiny_tts_dir(root / "Tiny-CosyVoice3", greedy=False), root / "prompts",
             root / "speakers", root / "outside")
    d.prompts.mkdir()
    d.outside.mkdir()
    shutil.copy(PROMPT_WAV, d.prompts / "reference.wav")
    shutil.copy(PROMPT_WAV, d.outside / "secret.wav")  # a good prompt: reading it would succeed
    (d.prompts / "link.wav").symlink_to(d.outside / "secret.wav")
    (d.prompts / "out").symlink_to(d.outside, target_is_directory=True)
    os.mkfifo(d.prompts / "fifo.wav")  # opening it for reading would block a reader forever
    return d


@pytest.fixture(scope="module")
def espeak(dirs: Dirs) -> Iterator[LiveService]:
    """No model at --model-path: the espeak-ng stand-in; no --prompt-dir."""
    cfg = TtsServiceConfig(model_path=dirs.model.parent / "no-model-here", max_text_chars=MAX_TEXT)
    yield from live_service(cfg, "tts-espeak")


@pytest.fixture(scope="module")
def cv3(dirs: Dirs) -> Iterator[LiveService]:
    cfg = TtsServiceConfig(model_path=dirs.model, device="cpu", prompt_dir=dirs.prompts,
                           speakers_dir=dirs.speakers, max_text_chars=MAX_TEXT)
    yield from live_service(cfg, "tts-cosyvoice3")


@pytest.fixture(scope="module")
def espeak_sdk(espeak: LiveService) -> openai.OpenAI:
    return openai.OpenAI(base_url=espeak.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def whisper() -> Any:
    from faster_whisper import WhisperModel

    from web_demo.server.workers.asr_worker import default_whisper_dir

    return WhisperModel(default_whisper_dir(), device="cpu", compute_type="int8", cpu_threads=2)


# ---- helpers -------------------------------------------------------------------------------

def assert_error(body: dict[str, Any], status: int, param: str | None, words: str = "",
                 *, plan: bool) -> None:
    assert set(body["error"]) == ERROR_KEYS, body
    assert (body["error"]["code"], body["error"]["param"]) == (status, param), body
    assert words in body["error"]["message"], body
    if plan:
        assert body["success"] is False, body
    else:
        assert "success" not in body, body  # OpenAI's error body, unchanged


def wav_int16(data: bytes) -> np.ndarray:
    """A WAV (exact or streamed 0xFFFFFFFF sizes) -> int16 [T] at 24 kHz, read by soundfile."""
    pcm, rate = sf.read(io.BytesIO(data), dtype="int16")
    assert rate == RATE and pcm.ndim == 1
    return np.asarray(pcm)


def decode_av(data: bytes) -> tuple[np.ndarray, int, str]:
    """Any container PyAV reads -> (float32 mono [T], the decoder's rate, codec name)."""
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = [frame.to_ndarray() for frame in container.decode(stream)]
        rate, codec = stream.codec_context.sample_rate, stream.codec_context.name
    mono = [f[0] / 32768 if f.dtype == np.int16 else f[0] for f in frames]  # [channels, T]
    pcm = np.concatenate(mono).astype(np.float32)
    return pcm, rate, codec


def plan_audio(body: dict[str, Any]) -> np.ndarray:
    """A non-streamed /api/synthesize answer -> its int16 samples, checking the plan's shape."""
    assert set(body) == {"audio", "sample_rate", "duration", "success"}, body.keys()
    assert body["success"] is True and body["sample_rate"] == RATE
    samples = wav_int16(base64.b64decode(body["audio"]))
    assert abs(len(samples) / RATE - body["duration"]) < 0.001, (len(samples), body["duration"])
    return samples


async def synthesize(url: str, body: dict[str, Any] | FormData) -> np.ndarray:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        kwargs: dict[str, Any] = {"data": body} if isinstance(body, FormData) else {"json": body}
        async with session.post(url + "/api/synthesize", **kwargs) as response:
            payload = await response.json()
            assert response.status == 200, payload
            assert response.content_type == "application/json"
            return plan_audio(payload)


async def stream_wav(url: str, body: dict[str, Any]) -> bytes:
    async with (aiohttp.ClientSession(headers=AUTH) as session,
                session.post(url + "/api/synthesize", json={**body, "stream": True}) as response):
        assert response.status == 200, await response.text()
        assert response.content_type == "audio/wav"
        assert response.headers.get("Transfer-Encoding") == "chunked"
        return await response.read()


def prompt_form(fields: dict[str, str], file: bytes = PROMPT, field: str = "prompt_wav") -> FormData:
    form = FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    form.add_field(field, file, filename="reference.wav", content_type="audio/wav")
    return form


def words_of(text: str) -> set[str]:
    return {w.strip(".,!?'\"").lower() for w in text.split()}


def transcribe(whisper: Any, pcm_24k: np.ndarray) -> str:
    segments, _ = whisper.transcribe(resample(pcm_24k, RATE, 16000), beam_size=1, language="en")
    return " ".join(s.text for s in segments)


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """ERROR records of this process (the app's thread included): a crash logs one."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_idle(service: LiveService, pid: int, *, within_s: float) -> float:
    """Waits until the service has nothing pending or in flight and the worker burns (almost)
    no CPU for half a second; returns how long that took. Fails after within_s."""
    started = time.monotonic()
    while True:
        health = await asyncio.to_thread(service.health)
        before = cpu_seconds(pid)
        await asyncio.sleep(0.5)
        used = cpu_seconds(pid) - before
        if health["pending"] == 0 and health["in_flight"] == 0 and used < 0.1:
            return time.monotonic() - started
        assert time.monotonic() - started < within_s, (health, used)


async def disconnect_mid_stream(service: LiveService, body: dict[str, Any], *,
                                still_synthesizing: bool) -> None:
    """Starts a streamed synthesis, reads its first bytes, hangs up. espeak-ng makes all of the
    audio before its first chunk, so only CosyVoice3 is known to be still synthesizing then."""
    async with aiohttp.ClientSession(headers=AUTH) as session:
        response = await session.post(service.url + "/api/synthesize", json={**body, "stream": True})
        assert response.status == 200, await response.text()
        first = await response.content.read(44)
        assert first[:4] == b"RIFF" and first[4:8] == b"\xff\xff\xff\xff"
        health = await asyncio.to_thread(service.health)
        assert health["in_flight"] == 1, health
        if still_synthesizing:
            assert health["pending"] == 1, health
        response.close()  # drops the connection with the body unread


# ---- the espeak-ng stand-in ----------------------------------------------------------------

async def test_espeak_plan_body_stream_and_whisper_hears_it(espeak: LiveService, whisper: Any) -> None:
    female = await synthesize(espeak.url, {"text": ALICE, "speaker_id": "英文女"})
    male = await synthesize(espeak.url, {"text": ALICE, "speaker_id": "英文男"})
    assert 1.5 < len(female) / RATE < 6 and not np.array_equal(female[:len(male)], male[:len(female)])
    for samples in (female, male):
        heard = words_of(transcribe(whisper, samples.astype(np.float32) / 32768))
        assert heard >= ALICE_WORDS, heard
    # Streamed: the header's sizes are unknown (0xFFFFFFFF); soundfile and PyAV read it to the
    # end, and it holds exactly the samples of the JSON answer.
    streamed = await stream_wav(espeak.url, {"text": ALICE, "speaker_id": "英文女"})
    assert streamed[:4] == b"RIFF" and streamed[4:8] == streamed[40:44] == b"\xff\xff\xff\xff"
    np.testing.assert_array_equal(wav_int16(streamed), female)
    pcm, rate, codec = decode_av(streamed)
    assert (rate, codec, len(pcm)) == (RATE, "pcm_s16le", len(female))
    # The plan's defaults: no speaker_id is 中文女 (espeak-ng's Mandarin voice).
    assert len(await synthesize(espeak.url, {"text": "你好，我是语音助手。"})) > RATE // 2


def openai_wav(sdk: openai.OpenAI, **options: Any) -> np.ndarray:
    return wav_int16(sdk.audio.speech.create(model="tts-1", voice="alloy", input=FOX,
                                             response_format="wav", **options).content)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_openai_sdk_every_response_format(espeak_sdk: openai.OpenAI, fmt: str) -> None:
    reference = openai_wav(espeak_sdk)  # what the other formats encode
    whole = espeak_sdk.audio.speech.create(model="tts-1", voice="alloy", input=FOX, response_format=fmt)
    with espeak_sdk.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts", voice="alloy", input=FOX, response_format=fmt) as response:
        chunks = list(response.iter_bytes(4096))
        content_type = response.headers["content-type"]
    assert b"".join(chunks) == whole.content  # espeak-ng is deterministic
    assert content_type == {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac",
                            "flac": "audio/flac", "wav": "audio/wav", "pcm": "audio/pcm"}[fmt]
    data = whole.content
    if fmt == "pcm":  # raw s16le at 24 kHz: the wav's samples without the header
        np.testing.assert_array_equal(np.frombuffer(data, "<i2"), reference)
        return
    pcm, rate, codec = decode_av(data)
    seconds = len(reference) / RATE
    # Lossless: the same samples. FLAC comes whole, its STREAMINFO holding the total, which
    # libsndfile (soundfile) needs: a streamed FLAC's unknown total makes it refuse the file.
    if fmt in ("wav", "flac"):
        assert rate == RATE
        np.testing.assert_allclose(pcm, reference / 32768, atol=1e-6)
        np.testing.assert_array_equal(sf.read(io.BytesIO(data), dtype="int16")[0], reference)
    elif fmt == "opus":  # Opus decodes at 48 kHz; its header keeps the input rate
        head = data.index(b"OpusHead")
        assert rate == 48000 and struct.unpack_from("<I", data, head + 12)[0] == RATE
        assert abs(len(pcm) / rate - seconds) < 0.03, (len(pcm) / rate, seconds)
    else:  # mp3, aac: whole frames, plus the encoder delay
        assert rate == RATE and codec in ("mp3float", "aac")
        assert 0 <= len(pcm) / rate - seconds < 0.15, (len(pcm) / rate, seconds)
    assert float(np.abs(pcm).max()) > 0.1  # speech, not silence


def test_openai_sdk_speed_and_sse_events(espeak_sdk: openai.OpenAI) -> None:
    normal = openai_wav(espeak_sdk)
    fast = openai_wav(espeak_sdk, speed=2.0)
    assert 0.35 < len(fast) / len(normal) < 0.75
    pcm = espeak_sdk.audio.speech.create(model="tts-1", voice="alloy", input=FOX, response_format="pcm")
    with espeak_sdk.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=FOX, response_format="pcm", stream_format="sse") as response:
        assert response.headers["content-type"] == "text/event-stream"
        events = [json.loads(line[len("data: "):]) for line in response.iter_lines() if line]
    types = [e["type"] for e in events]
    assert types[-1] == "speech.audio.done" and set(types[:-1]) == {"speech.audio.delta"}
    assert len(types) >= 3  # the audio comes in several deltas (1 s chunks)
    assert b"".join(base64.b64decode(e["audio"]) for e in events[:-1]) == pcm.content
    usage = events[-1]["usage"]
    assert usage["input_tokens"] == len(FOX) and usage["total_tokens"] == len(FOX) + usage["output_tokens"]
    assert usage["output_tokens"] == round(len(pcm.content) / 2 / RATE * 25)


async def test_espeak_bad_input_is_a_4xx_with_the_error_body(espeak: LiveService,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    plan_cases: list[tuple[Any, int, str | None, str]] = [
        ({"text": ""}, 400, "text", "must not be empty"),
        ({"text": "   "}, 400, "text", "must not be empty"),
        ({"speaker_id": "英文女"}, 400, "text", "required"),
        ({"text": "a" * (MAX_TEXT + 1)}, 400, "text", f"at most {MAX_TEXT}"),
        ({"text": 42}, 400, "text", "must be a string"),
        ({"text": FOX, "speaker_id": "no such voice!"}, 400, "voice", "invalid voice name"),
        ({"text": FOX, "speaker_id": "xx-nonexistent"}, 400, "voice", "unknown espeak-ng voice"),
        ({"text": FOX, "stream": "yes"}, 400, "stream", "true or false"),
        ({"text": FOX, "seed": -1}, 400, "seed", "integer"),
        ({"text": FOX, "seed": 1.5}, 400, "seed", "integer"),
        # No --prompt-dir: no prompt path is read, whatever it names.
        ({"text": FOX, "prompt_wav": "reference.wav"}, 400, "prompt_wav", "no --prompt-dir"),
        ({"text": FOX, "prompt_wav": "/etc/passwd"}, 400, "prompt_wav", "no --prompt-dir"),
        # espeak-ng cannot clone a voice.
        ({"text": FOX, "prompt_wav_base64": PROMPT_B64}, 400, "prompt_wav", "cannot clone"),
        ({"text": FOX, "prompt_wav_base64": "not base64!"}, 400, "prompt_wav_base64", "not valid base64"),
        (b"{not json", 400, None, "not valid JSON"),
        (b'["text", "hello"]', 400, None, "JSON object"),
        (b"\xff\xfe", 400, None, "not valid JSON"),
    ]
    openai_cases: list[tuple[Any, int, str | None, str]] = [
        ({"model": "tts-1", "input": "", "voice": "alloy"}, 400, "input", "must not be empty"),
        ({"model": "tts-1", "input": "a" * (MAX_TEXT + 1), "voice": "alloy"}, 400, "input", "at most"),
        ({"model": "tts-9", "input": FOX, "voice": "alloy"}, 404, "model", "not served here"),
        ({"input": FOX, "voice": "alloy"}, 400, "model", "required"),
        ({"model": "tts-1", "input": FOX}, 400, "voice", "required"),
        ({"model": "tts-1", "input": FOX, "voice": 7}, 400, "voice", "voice name"),
        ({"model": "tts-1", "input": FOX, "voice": {"id": 7}}, 400, "voice", "voice name"),
        ({"model": "tts-1", "input": FOX, "voice": "../../bin/sh"}, 400, "voice", "invalid voice name"),
        ({"model": "tts-1", "input": FOX, "voice": "alloy", "response_format": "ogg"}, 400,
         "response_format", "must be one of"),
        ({"model": "tts-1", "input": FOX, "voice": "alloy", "stream_format": "ws"}, 400,
         "stream_format", "must be one of"),
        *[({"model": "tts-1", "input": FOX, "voice": "alloy", "speed": speed}, 400, "speed", words)
          for speed, words in ((-1, "within"), (0, "within"), (100, "within"), ("fast", "a number"),
                               (True, "a number"))],
        (b"{not json", 400, None, "not valid JSON"),
        (b"[]", 400, None, "JSON object"),
    ]
    async with aiohttp.ClientSession(headers=AUTH) as session:
        for path, cases, streamed in (("/api/synthesize", plan_cases, {"stream": True}),
                                      ("/v1/audio/speech", openai_cases, {"stream_format": "sse"})):
            for body, status, param, words in cases:
                attempts = [{"data": body, "headers": {"Content-Type": "application/json"}}
                            if isinstance(body, bytes) else {"json": body}]
                if isinstance(body, dict) and not set(body) & set(streamed):
                    attempts.append({"json": {**body, **streamed}})  # refused before any audio
                for kwargs in attempts:
                    async with session.post(espeak.url + path, **kwargs) as response:
                        payload = await response.json()
                    assert response.status == status, (path, kwargs, payload)
                    assert_error(payload, status, param, words, plan=path == "/api/synthesize")
        form = prompt_form({"name": "mine", "prompt_text": PROMPT_TEXT})
        async with session.post(espeak.url + "/api/speakers", data=form) as response:
            payload = await response.json()
        assert response.status == 400, payload
        assert_error(payload, 400, "prompt_wav", "cannot clone", plan=True)
        async with session.get(espeak.url + "/metrics") as response:
            metrics = await response.text()
        assert 'fac_errors_total{kind="internal_error"}' not in metrics  # nothing of it was a crash
    assert errors_logged(caplog) == []


async def test_espeak_disconnect_frees_the_worker(espeak: LiveService,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    pid = espeak.worker_pid()
    await disconnect_mid_stream(espeak, {"text": FOX * 40, "speaker_id": "英文男"}, still_synthesizing=False)
    await wait_idle(espeak, pid, within_s=10)
    started = time.monotonic()
    assert len(await synthesize(espeak.url, {"text": FOX, "speaker_id": "英文女"})) > RATE
    assert time.monotonic() - started < 5
    assert errors_logged(caplog) == []


async def test_a_hang_up_is_not_counted_as_a_server_error(espeak: LiveService,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    await disconnect_mid_stream(espeak, {"text": FOX * 40, "speaker_id": "英文男"}, still_synthesizing=False)
    await wait_idle(espeak, espeak.worker_pid(), within_s=10)
    async with (aiohttp.ClientSession(headers=AUTH) as session,
                session.get(espeak.url + "/metrics") as response):
        metrics = await response.text()
    # 499 when the hang-up cancelled the handler, 200 when a write saw it first: never a 500
    assert not [line for line in metrics.splitlines()
                if 'route="/api/synthesize"' in line and 'status="500"' in line]
    assert 'fac_errors_total{kind="internal_error"}' not in metrics and errors_logged(caplog) == []


async def test_espeak_health_models_and_metrics(espeak: LiveService) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(espeak.url + "/health") as response:  # public: no key
            health = await response.json()
        assert response.status == 200
        assert {k: health[k] for k in ("status", "model", "device", "vllm_enabled", "stand_in")} == {
            "status": "healthy", "model": "espeak-ng", "device": "cpu", "vllm_enabled": False,
            "stand_in": True}
        async with session.get(espeak.url + "/v1/models") as response:
            assert response.status == 401  # every other route needs the key
    async with aiohttp.ClientSession(headers=AUTH) as session:
        await synthesize(espeak.url, {"text": "Hello.", "speaker_id": "英文男"})
        async with session.get(espeak.url + "/v1/models") as response:
            models = await response.json()
        assert models["object"] == "list"
        assert [m["id"] for m in models["data"]] == ["espeak-ng", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"]
        async with session.get(espeak.url + "/api/speakers") as response:
            speakers = await response.json()
        assert {"中文女", "英文男", "alloy"} <= set(speakers["speakers"]) and speakers["default"] == "中文女"
        async with session.get(espeak.url + "/metrics") as response:
            metrics = await response.text()
    for name in ("fac_tts_first_audio_seconds_count", "fac_tts_real_time_factor_count",
                 "fac_tts_audio_seconds_total"):
        line = next(line for line in metrics.splitlines() if line.startswith(name + '{model="espeak-ng"}'))
        assert float(line.split()[-1]) > 0, line


# ---- CosyVoice3 (tiny random weights) ----------------------------------------------------

def zero_shot(text: str = HELLO, seed: int = 7, **extra: Any) -> dict[str, Any]:
    return {"text": text, "prompt_wav_base64": PROMPT_B64, "prompt_text": PROMPT_TEXT, "seed": seed, **extra}


async def test_cv3_zero_shot_from_every_prompt_source_is_the_same_voice(cv3: LiveService,
                                                                        dirs: Dirs) -> None:
    base64_prompt = await synthesize(cv3.url, zero_shot())
    assert len(base64_prompt) > RATE // 2
    uploaded = await synthesize(cv3.url, prompt_form({"text": HELLO, "prompt_text": PROMPT_TEXT,
                                                      "seed": "7"}))
    by_name = await synthesize(cv3.url, {"text": HELLO, "prompt_wav": "reference.wav",
                                         "prompt_text": PROMPT_TEXT, "seed": 7})
    by_path = await synthesize(cv3.url, {"text": HELLO, "prompt_wav": str(dirs.prompts / "reference.wav"),
                                         "prompt_text": PROMPT_TEXT, "seed": 7})
    for other in (uploaded, by_name, by_path):
        np.testing.assert_array_equal(other, base64_prompt)
    # Streamed, the same samples (the worker streams either way); another seed, another take.
    np.testing.assert_array_equal(wav_int16(await stream_wav(cv3.url, zero_shot())), base64_prompt)
    assert not np.array_equal(await synthesize(cv3.url, zero_shot(seed=8)), base64_prompt)


async def test_cv3_modes_are_the_runtimes_own(cv3: LiveService, dirs: Dirs) -> None:
    """instructions -> instruct2, a prompt without text -> cross_lingual, with text ->
    zero_shot: each answer is exactly what the runtime gives in that mode for the same seed."""
    import torch

    from utils.cosyvoice3.synthesizer import CosyVoice3Tts
    from utils.cosyvoice3.text_inputs import Mode, with_system_prompt

    instruction = "请用非常开心的语气说这句话。"
    served = {Mode.ZERO_SHOT: await synthesize(cv3.url, zero_shot()),
              Mode.INSTRUCT2: await synthesize(cv3.url, zero_shot(instructions=instruction)),
              Mode.CROSS_LINGUAL: await synthesize(cv3.url, {"text": HELLO, "prompt_wav_base64": PROMPT_B64,
                                                             "seed": 7})}
    for a, b in ((Mode.ZERO_SHOT, Mode.INSTRUCT2), (Mode.ZERO_SHOT, Mode.CROSS_LINGUAL),
                 (Mode.INSTRUCT2, Mode.CROSS_LINGUAL)):
        assert not np.array_equal(served[a][:len(served[b])], served[b][:len(served[a])]), (a, b)
    tts = CosyVoice3Tts.from_model_dir(dirs.model, device="cpu", dtype=torch.float32)
    pcm, rate, _ = decode_native(PROMPT)
    with_text = tts.make_speaker((torch.from_numpy(pcm)[None], rate), PROMPT_TEXT)
    without_text = tts.make_speaker((torch.from_numpy(pcm)[None], rate), None)
    for mode, speaker, instruct in ((Mode.ZERO_SHOT, with_text, None),
                                    (Mode.INSTRUCT2, with_text, instruction),
                                    (Mode.CROSS_LINGUAL, without_text, None)):
        text, _, instruct = with_system_prompt(mode, HELLO, None, instruct)
        expected = pcm16(np.concatenate(list(tts.stream(text, mode, speaker, instruct=instruct, seed=7))))
        np.testing.assert_array_equal(served[mode], expected, err_msg=str(mode))


async def test_cv3_saved_speaker_is_its_prompt(cv3: LiveService, dirs: Dirs) -> None:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        form = prompt_form({"name": "小明_1", "prompt_text": PROMPT_TEXT})
        async with session.post(cv3.url + "/api/speakers", data=form) as response:
            created = await response.json()
        assert response.status == 201 and created == {"speaker_id": "小明_1", "success": True}
        # The file was written beside, then renamed: no temporary file is left.
        assert sorted(os.listdir(dirs.speakers)) == ["小明_1.safetensors"]
        from utils.cosyvoice3.speakers import load_speaker

        assert load_speaker(dirs.speakers / "小明_1.safetensors").prompt_text == PROMPT_TEXT
        async with session.get(cv3.url + "/api/speakers") as response:
            listed = await response.json()
        assert "小明_1" in listed["speakers"] and listed["success"] is True
    by_speaker = await synthesize(cv3.url, {"text": HELLO, "speaker_id": "小明_1", "seed": 11})
    by_upload = await synthesize(cv3.url, prompt_form({"text": HELLO, "prompt_text": PROMPT_TEXT,
                                                       "seed": "11"}))
    np.testing.assert_array_equal(by_speaker, by_upload)
    # The OpenAI SDK names the saved speaker as its voice.
    sdk = openai.OpenAI(base_url=cv3.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    for voice in ("小明_1", {"id": "小明_1"}):
        audio = sdk.audio.speech.create(model=dirs.model.name, voice=voice,  # type: ignore[arg-type]
                                        input=HELLO, response_format="wav")
        assert len(wav_int16(audio.content)) > RATE // 2
    with sdk.audio.speech.with_streaming_response.create(
            model="tts-1", voice="小明_1", input=HELLO, response_format="flac",
            instructions="请用开心的语气说。") as streamed:
        pcm, rate, codec = decode_av(streamed.read())
    assert (rate, codec) == (RATE, "flac") and len(pcm) > RATE // 2

    def seeded(speed: float) -> np.ndarray:  # seed: our extension, sent as the SDK's extra_body
        return wav_int16(sdk.audio.speech.create(model="tts-1", voice="小明_1", input=HELLO, speed=speed,
                                                 response_format="wav", extra_body={"seed": 5}).content)

    normal, fast = seeded(1.0), seeded(2.0)
    np.testing.assert_array_equal(normal, seeded(1.0))
    assert abs(len(fast) / len(normal) - 0.5) < 0.05  # stretched in time: twice as fast, half as long


async def test_cv3_concurrent_requests_each_equal_their_alone_result(cv3: LiveService) -> None:
    bodies = [zero_shot("你好，我是语音助手。", 21), zero_shot("Hello there, nice to meet you.", 22),
              zero_shot("今天天气很好，我们出去走走吧。", 23), zero_shot("The quick brown fox.", 24)]
    alone = [await synthesize(cv3.url, body) for body in bodies]
    together = await asyncio.gather(*(synthesize(cv3.url, body) for body in bodies))
    for i, (a, b) in enumerate(zip(alone, together)):
        np.testing.assert_array_equal(b, a, err_msg=f"request {i}")


async def test_cv3_bad_input_is_a_4xx_and_nothing_outside_the_prompt_dir_is_read(
        cv3: LiveService, dirs: Dirs, caplog: pytest.LogCaptureFixture) -> None:
    def path_case(value: str, words: str) -> tuple[dict[str, Any], int, str, str]:
        return {"text": HELLO, "prompt_wav": value, "prompt_text": PROMPT_TEXT}, 400, "prompt_wav", words

    outside = "inside the server's prompt directory"
    cases: list[tuple[Any, int, str | None, str]] = [
        path_case("/etc/passwd", outside),
        path_case("../../etc/passwd", outside),
        path_case("../outside/secret.wav", outside),
        path_case(str(dirs.outside / "secret.wav"), outside),
        path_case("link.wav", outside),  # a symlink in the prompt dir to a good prompt outside it
        path_case("out/secret.wav", outside),  # a symlinked directory
        path_case("missing.wav", "no prompt file"),
        path_case(".", "no prompt file"),
        path_case("a\x00b.wav", "no prompt file"),
        path_case("a" * 300 + ".wav", "no prompt file"),
        path_case("fifo.wav", "no prompt file"),
        ({"text": "。。。！", "prompt_wav_base64": PROMPT_B64, "prompt_text": PROMPT_TEXT}, 400, "text",
         "nothing to speak"),
        ({"text": HELLO, "speaker_id": "nobody"}, 404, "speaker_id", "unknown speaker"),
        ({"text": HELLO, "speaker_id": "../speakers/x"}, 404, "speaker_id", "unknown speaker"),
        # The default speaker, 中文女, is not in the tiny model.
        ({"text": HELLO}, 404, "speaker_id", "unknown speaker '中文女'"),
        ({"text": "", "prompt_wav_base64": PROMPT_B64}, 400, "text", "must not be empty"),
        ({"text": "字" * (MAX_TEXT + 1), "prompt_wav_base64": PROMPT_B64}, 400, "text", "at most"),
        ({"text": HELLO, "prompt_wav_base64": "%%%"}, 400, "prompt_wav_base64", "not valid base64"),
        ({"text": HELLO, "prompt_wav_base64": base64.b64encode(os.urandom(4000)).decode()}, 400,
         "prompt_wav", "could not decode"),
        ({"text": HELLO, "prompt_wav_base64": PROMPT_B64, "prompt_wav": "reference.wav"}, 400,
         "prompt_wav", "not both"),
        (prompt_form({"text": HELLO}, file=os.urandom(4000)), 400, "prompt_wav", "could not decode"),
        (prompt_form({"text": HELLO}, file=PROMPT[:60]), 400, "prompt_wav", ""),
        (prompt_form({"text": HELLO, "prompt_wav_base64": "UklGRg=="}), 400, "prompt_wav", "give one prompt"),
    ]
    async with aiohttp.ClientSession(headers=AUTH) as session:
        for body, status, param, words in cases:
            kwargs = {"data": body} if isinstance(body, FormData) else {"json": body}
            async with session.post(cv3.url + "/api/synthesize", **kwargs) as response:
                payload = await response.json()
            assert response.status == status, (body if isinstance(body, dict) else "form", payload)
            assert_error(payload, status, param, words, plan=True)
        for name, status in (("a/b", 400), ("../escape", 400), ("", 400), ("x" * 65, 400)):
            form = prompt_form({"name": name, "prompt_text": PROMPT_TEXT})
            async with session.post(cv3.url + "/api/speakers", data=form) as response:
                payload = await response.json()
            assert response.status == status, (name, payload)
            assert_error(payload, status, "name", "", plan=True)
        form = prompt_form({"name": "noise"}, file=os.urandom(4000))
        async with session.post(cv3.url + "/api/speakers", data=form) as response:
            assert_error(await response.json(), 400, "prompt_wav", "could not decode", plan=True)
        speech = {"model": "tts-1", "input": HELLO, "voice": "nobody"}
        async with session.post(cv3.url + "/v1/audio/speech", json=speech) as response:
            assert_error(await response.json(), 404, "speaker_id", "unknown speaker", plan=False)
        async with session.post(cv3.url + "/v1/audio/speech", json={**speech, "speed": 4.5}) as response:
            assert_error(await response.json(), 400, "speed", "within", plan=False)
        async with session.get(cv3.url + "/metrics") as response:
            metrics = await response.text()
    assert not list(dirs.speakers.glob("*/*")) and not list(dirs.speakers.glob("*.tmp"))
    assert not (dirs.speakers / "a").exists() and not (dirs.speakers.parent / "escape.safetensors").exists()
    assert 'fac_errors_total{kind="internal_error"}' not in metrics and errors_logged(caplog) == []
    # The refused files are good prompts: inside the directory the same bytes are used.
    assert len(await synthesize(cv3.url, path_case("reference.wav", "")[0])) > RATE // 2


async def test_cv3_disconnect_cancels_the_synthesis(cv3: LiveService,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    pid = cv3.worker_pid()
    started = time.monotonic()
    await disconnect_mid_stream(cv3, zero_shot(LONG_CV3), still_synthesizing=True)
    # The long text would keep the worker busy for a minute: it stops within seconds.
    await wait_idle(cv3, pid, within_s=8)
    assert time.monotonic() - started < 15
    began = time.monotonic()
    assert len(await synthesize(cv3.url, zero_shot())) > RATE // 2
    assert time.monotonic() - began < 10
    assert errors_logged(caplog) == []


async def test_cv3_health_and_metrics(cv3: LiveService, dirs: Dirs) -> None:
    health = await asyncio.to_thread(cv3.health)
    assert {k: health[k] for k in ("status", "model", "device", "vllm_enabled")} == {
        "status": "healthy", "model": dirs.model.name, "device": "cpu", "vllm_enabled": False}
    await synthesize(cv3.url, zero_shot())
    async with aiohttp.ClientSession(headers=AUTH) as session:
        async with session.get(cv3.url + "/metrics") as response:
            metrics = await response.text()
        async with session.get(cv3.url + "/v1/models") as response:
            models = await response.json()
    assert models["data"][0]["id"] == dirs.model.name
    for name in ("fac_tts_first_audio_seconds_count", "fac_tts_real_time_factor_count"):
        line = next(line for line in metrics.splitlines()
                    if line.startswith(f'{name}{{model="{dirs.model.name}"}}'))
        assert float(line.split()[-1]) > 0, line
