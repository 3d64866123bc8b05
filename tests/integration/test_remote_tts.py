"""The remote TTS engine against a fake OpenAI /v1/audio/speech (tests/fake_openai_tts.py).

Every timeout here is short (CLIENT_TIMEOUT_S), so a test that would hang fails within a few
seconds instead. The last tests drive the fake with the real openai SDK, which shows that the
fake speaks the real protocol.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

import numpy as np
import openai
import pytest
import soundfile as sf

from tests.fake_openai_tts import OURS, PCM_RATE, SPEECH, VLLM_OMNI, FakeOpenAITts, Fault, tone_24k
from utils.audio import resample
from web_demo.server.engines.base import PcmChunk, SpeakerCreate, SynthesisRequest
from web_demo.server.engines.remote_asr import RemoteDown, RemoteTimeout, RemoteUnavailable
from web_demo.server.engines.remote_tts import OpenAISpeechEngine, PcmDecoder
from web_demo.server.errors import BadRequest, NotFound, PayloadTooLarge, ServingError

CLIENT_TIMEOUT_S = 0.5
TEXT = "The quick brown fox jumps over the lazy dog."  # 44 characters: 0.44 s of tone
MODEL = "gpt-4o-mini-tts"


def sine(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def request(text: str = TEXT, **options: Any) -> SynthesisRequest:
    options.setdefault("voice", "alloy")
    return SynthesisRequest(text=text, **options)


def as_float(tone: np.ndarray) -> np.ndarray:
    return tone.astype(np.float32) / 32768


async def collect(engine: OpenAISpeechEngine, req: SynthesisRequest) -> list[PcmChunk]:
    async with aclosing(engine.synthesize(req)) as chunks:
        return [chunk async for chunk in chunks]


def joined(chunks: list[PcmChunk]) -> np.ndarray:
    return np.concatenate([c.pcm for c in chunks])


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
async def servers() -> AsyncIterator[Callable[..., Awaitable[FakeOpenAITts]]]:
    """Starts fake servers (keyword arguments: FakeOpenAITts's); stops them all afterwards."""
    started: list[FakeOpenAITts] = []

    async def start(**options: Any) -> FakeOpenAITts:
        server = FakeOpenAITts(**options)
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
async def engines() -> AsyncIterator[Callable[..., Awaitable[OpenAISpeechEngine]]]:
    """Starts an engine for a URL (keyword arguments: the engine's); closes it after the test."""
    started: list[OpenAISpeechEngine] = []

    async def start(url: str, **options: Any) -> OpenAISpeechEngine:
        options.setdefault("timeout_s", CLIENT_TIMEOUT_S)
        engine = OpenAISpeechEngine(url, options.pop("model", MODEL), **options)
        await engine.start()
        started.append(engine)
        return engine

    yield start
    for engine in started:
        await engine.aclose()


# ---- what the engine sends --------------------------------------------------------------

async def test_request_body_and_key(servers: Any, engines: Any) -> None:
    server = await servers(api_key="sk-test")
    engine = await engines(server.url + "/v1/", api_key="sk-test", voice="nova")
    await collect(engine, request(voice="coral", speed=1.5, instructions="Speak like a pirate.", seed=7))
    got = server.last()
    assert got.authorization == "Bearer sk-test"
    assert got.body == {"model": MODEL, "input": TEXT, "voice": "coral", "response_format": "pcm",
                        "stream_format": "audio", "speed": 1.5, "instructions": "Speak like a pirate.",
                        "seed": 7}


async def test_default_voice_and_only_what_is_set(servers: Any, engines: Any) -> None:
    server = await servers()
    engine = await engines(server.url, voice="nova")
    await collect(engine, request(voice=None))
    got = server.last()
    assert got.authorization is None
    assert got.body == {"model": MODEL, "input": TEXT, "voice": "nova", "response_format": "pcm",
                        "stream_format": "audio", "speed": 1.0}


async def test_no_voice_anywhere_leaves_it_to_the_server(servers: Any, engines: Any) -> None:
    server = await servers()
    engine = await engines(server.url)
    with pytest.raises(BadRequest, match="Missing required parameter: 'voice'") as caught:
        await collect(engine, request(voice=None))  # OpenAI requires one; vLLM-Omni has defaults
    assert caught.value.param == "voice" and "voice" not in server.last().body


async def test_a_prompt_is_refused_before_anything_is_sent(servers: Any, engines: Any) -> None:
    server = await servers()
    engine = await engines(server.url)
    with pytest.raises(BadRequest, match="cannot clone a voice") as caught:
        await collect(engine, request(prompt_audio=PcmChunk(sine(1.0, 16000), 16000), prompt_text="hi"))
    assert caught.value.param == "prompt_wav"
    assert not [r for r in server.received if r.path == SPEECH]


async def test_voice_cloning_sends_the_prompt_as_vllm_omni_ref_audio(servers: Any, engines: Any) -> None:
    server = await servers()
    engine = await engines(server.url, voice_cloning=True)
    prompt = sine(1.0, 22050)
    await collect(engine, request(prompt_audio=PcmChunk(prompt, 22050), prompt_text="what the prompt says"))
    body = server.last().body
    prefix = "data:audio/wav;base64,"
    assert body["ref_text"] == "what the prompt says" and body["ref_audio"].startswith(prefix)
    sent, rate = sf.read(io.BytesIO(base64.b64decode(body["ref_audio"][len(prefix):])), dtype="float32")
    assert rate == 22050  # at its own rate
    np.testing.assert_allclose(sent, prompt, atol=1 / 16384)  # 16-bit PCM WAV


# ---- what the engine yields -------------------------------------------------------------

async def test_streams_the_remote_audio_exactly(servers: Any, engines: Any) -> None:
    server = await servers()  # 4801-byte pieces: every other one ends inside a sample
    engine = await engines(server.url)
    assert engine.sample_rate == PCM_RATE
    chunks = await collect(engine, request())
    assert len(chunks) > 1 and {c.sample_rate for c in chunks} == {PCM_RATE}
    assert all(c.pcm.dtype == np.float32 and c.pcm.ndim == 1 for c in chunks)
    np.testing.assert_array_equal(joined(chunks), as_float(tone_24k(TEXT)))
    assert server.last().outcome == "finished"
    assert engine.health()["status"] == "healthy"


async def test_speed_changes_the_length(servers: Any, engines: Any) -> None:
    server = await servers()
    engine = await engines(server.url)
    chunks = await collect(engine, request(speed=2.0))
    assert len(joined(chunks)) == len(tone_24k(TEXT, 2.0)) == len(TEXT) * 120


async def test_chunks_arrive_before_the_remote_finished(servers: Any, engines: Any) -> None:
    server = await servers(chunk_bytes=4800, chunk_delay_s=0.05)  # 0.1 s of audio every 50 ms
    engine = await engines(server.url)
    text = "x" * 200  # 2 s of audio in 20 pieces: about 1 s to send
    started = time.monotonic()
    async with aclosing(engine.synthesize(request(text))) as chunks:
        first = await anext(chunks)
        first_after_s = time.monotonic() - started
        assert server.last().outcome is None and server.last().bytes_sent < tone_24k(text).nbytes
        rest = [chunk async for chunk in chunks]
    total_s = time.monotonic() - started
    assert first_after_s < 0.5 < total_s  # the first piece left after 50 ms, the last after ~1 s
    assert len(rest) >= 10
    assert len(first.pcm) + len(joined(rest)) == len(tone_24k(text))


@pytest.mark.parametrize("rate", [16000, 22050, 44100, 48000])
async def test_resampled_rate_and_length(servers: Any, engines: Any, rate: int) -> None:
    server = await servers(chunk_bytes=999)  # short pieces: where per-piece resampling fails most
    engine = await engines(server.url)
    chunks = await collect(engine, request(sample_rate=rate))
    assert {c.sample_rate for c in chunks} == {rate}
    whole = as_float(tone_24k(TEXT))
    got = joined(chunks)
    assert len(got) == round(len(whole) * rate / PCM_RATE)
    # Streamed through one resampler: the same as resampling the whole answer at once.
    np.testing.assert_allclose(got, resample(whole, PCM_RATE, rate), atol=1e-5)


async def test_the_native_rate_asked_explicitly_is_not_resampled(servers: Any, engines: Any) -> None:
    server = await servers()
    engine = await engines(server.url)
    chunks = await collect(engine, request(sample_rate=PCM_RATE))
    np.testing.assert_array_equal(joined(chunks), as_float(tone_24k(TEXT)))


def test_decoder_joins_samples_split_across_pieces() -> None:
    data = tone_24k("abc").tobytes()
    for cut in (1, 3, 7, 333):
        decoder = PcmDecoder(PCM_RATE, PCM_RATE)
        pieces = [decoder.push(data[i:i + cut]) for i in range(0, len(data), cut)]
        assert not decoder.dangling
        np.testing.assert_array_equal(np.concatenate(pieces), as_float(tone_24k("abc")))
    decoder = PcmDecoder(PCM_RATE, PCM_RATE)
    assert decoder.push(data[:5]).size == 2 and decoder.dangling


# ---- stopping early -----------------------------------------------------------------------

async def test_closing_the_generator_closes_the_remote_connection(servers: Any, engines: Any) -> None:
    server = await servers(chunk_delay_s=0.02)
    engine = await engines(server.url)
    text = "x" * 1000  # 10 s of audio: far from done when the client leaves
    async with aclosing(engine.synthesize(request(text))) as chunks:
        await anext(chunks)
    got = server.last()
    await asyncio.wait_for(got.ended.wait(), 2.0)
    assert got.outcome == "disconnected" and got.bytes_sent < tone_24k(text).nbytes // 4
    assert (await collect(engine, request())) and server.last().outcome == "finished"  # still usable


async def test_cancelling_the_consumer_closes_the_remote_connection(servers: Any, engines: Any) -> None:
    server = await servers(chunk_delay_s=0.02)
    engine = await engines(server.url)
    first = asyncio.Event()

    async def consume() -> None:
        async with aclosing(engine.synthesize(request("x" * 1000))) as chunks:
            async for _ in chunks:
                first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 2.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(server.last().ended.wait(), 2.0)
    assert server.last().outcome == "disconnected"


# ---- faults -> error kinds ----------------------------------------------------------------

UNAVAILABLE = [(Fault.SLOW, RemoteTimeout, 504), (Fault.ERROR_500, RemoteUnavailable, 502),
               (Fault.RATE_LIMITED, RemoteUnavailable, 502), (Fault.GARBAGE, RemoteUnavailable, 502)]
CLIENT_ERRORS = [(Fault.BAD_REQUEST, BadRequest, 400, "input"),
                 (Fault.TOO_LARGE, PayloadTooLarge, 413, "input"),
                 (Fault.UNPROCESSABLE, BadRequest, 400, "input"),
                 (Fault.VOICE_NOT_FOUND, NotFound, 404, "voice")]


@pytest.mark.parametrize(("fault", "error", "status"), UNAVAILABLE)
async def test_unavailable_faults_mark_the_engine_down(servers: Any, engines: Any, fault: Fault,
                                                       error: type[ServingError], status: int) -> None:
    server = await servers()
    engine = await engines(server.url)
    assert engine.health()["status"] == "healthy"
    server.fault = fault
    started = time.monotonic()
    with pytest.raises(error) as caught:
        await collect(engine, request())
    assert time.monotonic() - started < CLIENT_TIMEOUT_S + 1
    assert type(caught.value) is error and caught.value.http_status == status and caught.value.retryable
    health = engine.health()
    assert health["status"] == "degraded" and health["last_error"] == str(caught.value)
    assert not await engine.probe()
    server.fault = None
    assert await engine.probe()
    assert engine.health() == {"name": "remote-tts", "status": "healthy", "model": MODEL, "url": server.url,
                               "device": f"remote {server.url}", "engine": "openai-speech",
                               "last_error": None}


async def test_garbage_is_named_by_its_content_type(servers: Any, engines: Any) -> None:
    server = await servers()
    engine = await engines(server.url, name="tts-a")
    server.fault = Fault.GARBAGE
    with pytest.raises(RemoteUnavailable, match="tts-a: /v1/audio/speech answered 200 with text/html"):
        await collect(engine, request())


@pytest.mark.parametrize(("fault", "error", "status", "param"), CLIENT_ERRORS)
async def test_client_errors_carry_the_remote_message(servers: Any, engines: Any, fault: Fault,
                                                      error: type[ServingError], status: int,
                                                      param: str) -> None:
    server = await servers()
    engine = await engines(server.url, name="tts-a")
    server.fault = fault
    with pytest.raises(error) as caught:
        await collect(engine, request())
    assert type(caught.value) is error and caught.value.http_status == status
    assert caught.value.message == f"tts-a rejected the request: fake says no ({fault.value})"
    assert caught.value.param == param and not caught.value.retryable
    assert engine.health()["status"] == "healthy"  # it answered; the input was at fault


@pytest.mark.parametrize(("options", "param", "message"), [
    ({"speed": 5.0}, "speed", "Expected a value between 0.25 and 4.0"),
    ({"voice": "darth"}, "voice", "Invalid value: 'darth'"),
    ({"text": "x" * 4097}, "input", "1 to 4096 characters"),
])
async def test_the_remote_validation_is_a_bad_request(servers: Any, engines: Any, options: dict[str, Any],
                                                      param: str, message: str) -> None:
    server = await servers()
    engine = await engines(server.url)
    with pytest.raises(BadRequest, match=message) as caught:
        await collect(engine, request(**options))
    assert type(caught.value) is BadRequest and caught.value.param == param


@pytest.mark.parametrize(("fault", "error", "outcome"), [(Fault.DROP, RemoteUnavailable, "dropped"),
                                                         (Fault.STALL, RemoteTimeout, None)])
async def test_an_error_after_some_audio_still_raises(servers: Any, engines: Any, fault: Fault,
                                                      error: type[ServingError], outcome: str | None) -> None:
    server = await servers()
    engine = await engines(server.url)
    server.fault = fault
    received: list[PcmChunk] = []
    with pytest.raises(error) as caught:
        async with aclosing(engine.synthesize(request("x" * 200))) as chunks:
            async for chunk in chunks:
                received.append(chunk)
    assert type(caught.value) is error
    assert 0 < len(joined(received)) < len(tone_24k("x" * 200))
    assert server.last().outcome == outcome
    assert engine.health()["status"] == "degraded"


async def test_down_at_start_serves_degraded_until_it_answers(engines: Any) -> None:
    server = FakeOpenAITts()
    server.port = closed_port()
    engine = await engines(server.url)
    health = engine.health()
    assert health["status"] == "degraded" and "cannot connect" in health["last_error"]
    with pytest.raises(RemoteDown) as caught:
        await collect(engine, request())
    assert caught.value.http_status == 503
    await server.start()
    try:
        assert len(joined(await collect(engine, request()))) == len(tone_24k(TEXT))
        assert engine.health()["status"] == "healthy"
    finally:
        await server.stop()


async def test_a_restarted_server_is_used_at_once(servers: Any, engines: Any) -> None:
    server = await servers()
    engine = await engines(server.url)
    await collect(engine, request())  # leaves a keep-alive connection in the pool
    await server.stop()
    await server.start()
    assert len(joined(await collect(engine, request()))) == len(tone_24k(TEXT))
    assert engine.health()["status"] == "healthy"


async def test_wrong_model_or_key_is_unavailable(servers: Any, engines: Any) -> None:
    server = await servers(model="tts-1", api_key="right")
    engine = await engines(server.url, api_key="right")
    assert "serves ['tts-1'], not 'gpt-4o-mini-tts'" in engine.health()["last_error"]
    with pytest.raises(RemoteUnavailable, match="HTTP 404: The model `gpt-4o-mini-tts` does not exist"):
        await collect(engine, request())  # not the client's fault: how the engine was set up
    wrong_key = await engines(server.url, model="tts-1", api_key="wrong")
    assert wrong_key.health()["status"] == "degraded"
    with pytest.raises(RemoteUnavailable, match="HTTP 401"):
        await collect(wrong_key, request())


async def test_api_key_is_never_logged(servers: Any, engines: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server = await servers(api_key="sk-secret-123")
    engine = await engines(server.url, api_key="sk-secret-123")
    server.fault = Fault.ERROR_500
    with pytest.raises(RemoteUnavailable) as caught:
        await collect(engine, request())
    assert caplog.records and "sk-secret" not in caplog.text + str(caught.value) + str(engine.health())


async def test_synthesize_before_start_is_a_programming_error() -> None:
    engine = OpenAISpeechEngine("http://127.0.0.1:1", MODEL)
    with pytest.raises(RuntimeError, match="start"):
        await collect(engine, request())


# ---- voices --------------------------------------------------------------------------------

async def test_our_service_lists_and_saves_voices(servers: Any, engines: Any) -> None:
    server = await servers(voice_api=OURS, voices=frozenset({"中文女", "英文男"}), api_key="k")
    engine = await engines(server.url, api_key="k")
    assert await engine.speakers() == ["中文女", "英文男"]
    prompt = sine(2.0, 16000)
    saved = await engine.add_speaker(SpeakerCreate("narrator", PcmChunk(prompt, 16000), "the prompt's text"))
    assert saved == "narrator" and "narrator" in await engine.speakers()
    voice = server.saved["narrator"]
    assert (voice.sample_rate, voice.prompt_text) == (16000, "the prompt's text")
    np.testing.assert_allclose(voice.pcm, prompt, atol=1 / 16384)
    assert server.received[-1].authorization == "Bearer k"
    chunks = await collect(engine, request(voice=saved))  # the saved voice is a voice from now on
    assert server.last().body["voice"] == "narrator" and len(joined(chunks)) == len(tone_24k(TEXT))


async def test_our_service_refusing_a_voice_is_a_bad_request(servers: Any, engines: Any) -> None:
    server = await servers(voice_api=OURS)
    engine = await engines(server.url)
    with pytest.raises(BadRequest, match="name and a prompt_wav file are required") as caught:
        await engine.add_speaker(SpeakerCreate("", PcmChunk(sine(1.0, 16000), 16000), None))
    assert caught.value.param == "name"


async def test_vllm_omni_lists_voices(servers: Any, engines: Any) -> None:
    server = await servers(voice_api=VLLM_OMNI, voices=frozenset({"vivian", "ryan"}))
    engine = await engines(server.url)
    assert await engine.speakers() == ["ryan", "vivian"]
    with pytest.raises(BadRequest, match="cannot save voices"):
        await engine.add_speaker(SpeakerCreate("x", PcmChunk(sine(1.0, 16000), 16000), None))


async def test_a_server_without_a_listing_offers_the_default_voice(servers: Any, engines: Any) -> None:
    server = await servers()  # OpenAI: no listing route
    assert await (await engines(server.url, voice="alloy")).speakers() == ["alloy"]
    assert await (await engines(server.url)).speakers() == []


async def test_listing_a_remote_that_is_down_is_remote_down(engines: Any) -> None:
    engine = await engines(f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(RemoteDown):
        await engine.speakers()


# ---- the fake against the real SDK ----------------------------------------------------------

@pytest.fixture
async def sdk(servers: Any) -> AsyncIterator[tuple[FakeOpenAITts, openai.AsyncOpenAI]]:
    server = await servers(api_key="sk-sdk")
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="sk-sdk", max_retries=0)
    yield server, client
    await client.close()


@pytest.mark.parametrize("fmt", ["pcm", "wav"])
async def test_openai_sdk_streams_from_the_fake(sdk: Any, fmt: str) -> None:
    server, client = sdk
    async with client.audio.speech.with_streaming_response.create(
            model=MODEL, voice="alloy", input=TEXT, response_format=fmt, speed=1.0,
            instructions="Calm.") as response:
        assert response.http_response.headers["content-type"] == f"audio/{fmt}"
        pieces = [piece async for piece in response.iter_bytes()]
    data = b"".join(pieces)
    audio = data[44:] if fmt == "wav" else data
    assert audio == tone_24k(TEXT).tobytes()
    if fmt == "wav":
        assert data[:4] == b"RIFF" and int.from_bytes(data[24:28], "little") == PCM_RATE
    got = server.last()
    assert got.authorization == "Bearer sk-sdk" and got.outcome == "finished"
    assert got.body == {"model": MODEL, "voice": "alloy", "input": TEXT, "response_format": fmt,
                        "speed": 1.0, "instructions": "Calm."}


async def test_openai_sdk_reads_the_fake_errors(sdk: Any) -> None:
    _, client = sdk
    with pytest.raises(openai.BadRequestError) as caught:
        await client.audio.speech.create(model=MODEL, voice="alloy", input=TEXT, speed=5.0)
    assert (caught.value.status_code, caught.value.param, caught.value.code, caught.value.type) == (
        400, "speed", "decimal_above_max_value", "invalid_request_error")
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        await client.audio.speech.create(model="tts-9", voice="alloy", input=TEXT)
