"""Remote ASR engines against a fake vLLM (tests/fake_openai_asr.py), and failover between them.

Every timeout here is short (CLIENT_TIMEOUT_S, PROBE_INTERVAL_S), so a test that would hang
fails within a few seconds instead.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from tests.fake_openai_asr import FakeOpenAIAsr, Fault
from tests.fakes import FakeAsr
from web_demo.server.engines.asr_failover import FailoverAsrEngine
from web_demo.server.engines.base import Segment, Transcription, TranscriptionRequest, Word
from web_demo.server.engines.failover import AllEnginesDown, CircuitBreaker
from web_demo.server.engines.remote_asr import (
    OpenAITranscriptionsEngine,
    Qwen3ChatAsrEngine,
    RemoteDown,
    RemoteTimeout,
    RemoteUnavailable,
    error_detail,
    parse_qwen3_answer,
    verbose_segments,
)
from web_demo.server.errors import BadRequest, EngineError, PayloadTooLarge, ServingError, WorkerDied

CLIENT_TIMEOUT_S = 0.5
PROBE_INTERVAL_S = 0.05
TRANSCRIPTIONS = "/v1/audio/transcriptions"
CHAT = "/v1/chat/completions"
ENGINES = [OpenAITranscriptionsEngine, Qwen3ChatAsrEngine]
RemoteEngine = OpenAITranscriptionsEngine | Qwen3ChatAsrEngine


def speech_16k(seconds: float = 1.0) -> np.ndarray:
    """A chirp, so that the WAV round trip is checked on something that is not silence."""
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.4 * np.sin(2 * np.pi * (200 + 300 * t) * t)).astype(np.float32)


def request(**options: Any) -> TranscriptionRequest:
    return TranscriptionRequest(pcm_16k=options.pop("pcm_16k", speech_16k()), **options)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def until(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def servers() -> AsyncIterator[Callable[..., Awaitable[FakeOpenAIAsr]]]:
    """Starts fake servers (keyword arguments: FakeOpenAIAsr's); stops them all afterwards."""
    started: list[FakeOpenAIAsr] = []

    async def start(**options: Any) -> FakeOpenAIAsr:
        server = FakeOpenAIAsr(**options)
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
async def engines() -> AsyncIterator[Callable[[Any], Awaitable[Any]]]:
    """Starts an engine (remote or failover) and closes it after the test."""
    started: list[Any] = []

    async def start(engine: Any) -> Any:
        await engine.start()
        started.append(engine)
        return engine

    yield start
    for engine in started:
        await engine.aclose()


def remote(cls: type[RemoteEngine], url: str, **options: Any) -> RemoteEngine:
    options.setdefault("timeout_s", CLIENT_TIMEOUT_S)
    return cls(name=options.pop("name", cls.__name__), base_url=url, model=options.pop("model", "whisper-1"),
               **options)


# ---- what the engines send --------------------------------------------------------------

async def test_transcriptions_request_fields_and_audio(servers: Any, engines: Any) -> None:
    server = await servers(api_key="sk-test")
    engine = await engines(remote(OpenAITranscriptionsEngine, server.url + "/v1/", api_key="sk-test"))
    pcm = speech_16k(1.5)
    await engine.transcribe(request(pcm_16k=pcm, language="zh", prompt="上一句", temperature=0.2,
                                    hotwords=("Fun-Audio-Chat", "语音助手"), word_timestamps=True))
    got = server.last(TRANSCRIPTIONS)
    assert got.authorization == "Bearer sk-test"
    assert got.fields == {"model": ["whisper-1"], "temperature": ["0.2"],
                          "response_format": ["verbose_json"],
                          "timestamp_granularities[]": ["word", "segment"], "language": ["zh"],
                          "prompt": ["上一句"], "hotwords": ["Fun-Audio-Chat,语音助手"]}
    assert got.audio_16k is not None
    np.testing.assert_allclose(got.audio_16k, pcm, atol=1 / 16384)  # 16-bit PCM WAV


async def test_transcriptions_sends_only_what_is_set(servers: Any, engines: Any) -> None:
    server = await servers()
    engine = await engines(remote(OpenAITranscriptionsEngine, server.url))
    await engine.transcribe(request())
    assert server.last(TRANSCRIPTIONS).fields == {"model": ["whisper-1"], "temperature": ["0.0"],
                                                  "response_format": ["verbose_json"]}


async def test_qwen3_request_is_a_chat_with_a_data_url(servers: Any, engines: Any) -> None:
    server = await servers(model="qwen3-asr", api_key="k")
    engine = await engines(remote(Qwen3ChatAsrEngine, server.url, model="qwen3-asr", api_key="k"))
    pcm = speech_16k(0.8)
    await engine.transcribe(request(pcm_16k=pcm, prompt="会议记录", hotwords=("通义", "千问"),
                                    temperature=0.3))
    got = server.last(CHAT)
    assert got.authorization == "Bearer k"
    assert got.body is not None
    system, user = got.body["messages"]
    assert system == {"role": "system", "content": "会议记录\n通义, 千问"}
    assert user["role"] == "user" and user["content"][0]["type"] == "audio_url"
    assert user["content"][0]["audio_url"]["url"].startswith("data:audio/wav;base64,")
    assert got.body["temperature"] == 0.3 and "continue_final_message" not in got.body
    assert got.body["max_tokens"] == 64 + 16  # 0.8 s: a loop ends in tokens, not at the timeout
    assert got.audio_16k is not None
    np.testing.assert_allclose(got.audio_16k, pcm, atol=1 / 16384)


async def test_qwen3_without_context_sends_no_system_message(servers: Any, engines: Any) -> None:
    server = await servers()
    engine = await engines(remote(Qwen3ChatAsrEngine, server.url))
    await engine.transcribe(request())
    body = server.last(CHAT).body
    assert body is not None and [m["role"] for m in body["messages"]] == ["user"]


async def test_qwen3_forced_language_prefills_the_answer(servers: Any, engines: Any) -> None:
    server = await servers(text="今天天气很好")
    engine = await engines(remote(Qwen3ChatAsrEngine, server.url))
    result = await engine.transcribe(request(language="zh"))
    body = server.last(CHAT).body
    assert body is not None
    assert body["messages"][-1] == {"role": "assistant", "content": "language Chinese<asr_text>"}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert (result.text, result.language) == ("今天天气很好", "zh")


async def test_qwen3_language_without_a_name_is_a_400_before_any_request(servers: Any, engines: Any) -> None:
    server = await servers()
    engine = await engines(remote(Qwen3ChatAsrEngine, server.url))
    with pytest.raises(BadRequest) as caught:
        await engine.transcribe(request(language="haw"))
    assert caught.value.param == "language"
    assert not [r for r in server.received if r.path == CHAT]


# ---- what the engines make of the answers ------------------------------------------------

async def test_verbose_json_segments_words_and_language_name(servers: Any, engines: Any) -> None:
    server = await servers(text="one two three four", language_names=True)
    engine = await engines(remote(OpenAITranscriptionsEngine, server.url))
    result = await engine.transcribe(request(pcm_16k=speech_16k(2.0), word_timestamps=True))
    assert (result.text, result.language, result.duration_s) == ("one two three four", "en", 2.0)
    assert [(s.start_s, s.end_s, s.text) for s in result.segments] == [(0.0, 1.0, "one two"),
                                                                         (1.0, 2.0, "three four")]
    assert [[w.text for w in s.words] for s in result.segments] == [["one", "two"], ["three", "four"]]
    assert result.segments[0].avg_logprob == -0.25 and result.segments[1].no_speech_prob == 0.01


async def test_verbose_json_without_words_and_with_a_code(servers: Any, engines: Any) -> None:
    server = await servers(text="你好 世界", language="zh")
    engine = await engines(remote(OpenAITranscriptionsEngine, server.url))
    result = await engine.transcribe(request())
    assert result.language == "zh"
    assert [s.words for s in result.segments] == [(), ()]


async def test_server_without_verbose_json_is_asked_json_from_then_on(servers: Any, engines: Any) -> None:
    server = await servers(verbose_json=False)
    engine = await engines(remote(OpenAITranscriptionsEngine, server.url))
    first = await engine.transcribe(request(language="en"))
    await engine.transcribe(request())
    formats = [r.fields["response_format"][0] for r in server.received if r.path == TRANSCRIPTIONS]
    assert formats == ["verbose_json", "json", "json"]
    assert (first.text, first.language, first.segments, first.duration_s) == (
        "hello from the fake server", "en", (), 1.0)


def test_words_without_segments_and_words_inside_segments() -> None:
    words = [{"word": " b", "start": 0.5, "end": 0.9}, {"word": " a", "start": 0.0, "end": 0.4,
                                                         "probability": 0.9}]
    assert verbose_segments([], words) == (
        Segment(0.0, 0.9, "a b", (Word(0.0, 0.4, "a", 0.9), Word(0.5, 0.9, "b"))),)
    inside = [{"start": 0.0, "end": 1.0, "text": " a b", "words": words[1:]}]
    assert verbose_segments(inside, words)[0].words == (Word(0.0, 0.4, "a", 0.9),)  # not twice


@pytest.mark.parametrize(("body", "expected"), [
    (b'{"error": {"message": "bad language", "type": "BadRequestError", "param": "language", "code": 400}}',
     ("bad language", "language")),
    (b'{"object": "error", "message": "old vLLM", "type": "BadRequestError", "param": null, "code": 400}',
     ("old vLLM", None)),
    (b'{"detail": [{"loc": ["body", "file"], "msg": "field required"}]}',
     ("[{'loc': ['body', 'file'], 'msg': 'field required'}]", None)),
    (b"upstream connect error", ("upstream connect error", None)),
    (b"", ("(empty body)", None)),
])
def test_error_bodies(body: bytes, expected: tuple[str, str | None]) -> None:
    assert error_detail(body) == expected


@pytest.mark.parametrize(("content", "expected"), [
    ("language Chinese<asr_text>今天天气很好。", ("zh", "今天天气很好。")),
    ("language English<asr_text> Hello there. ", ("en", "Hello there.")),
    ("language Chinese,English<asr_text>混合 mixed", ("zh", "混合 mixed")),
    ("language None<asr_text>", (None, "")),
    ("language Klingon<asr_text>Qapla'", (None, "Qapla'")),
    ("just the text", (None, "just the text")),
    ("", (None, "")),
])
def test_qwen3_answer_parsing(content: str, expected: tuple[str | None, str]) -> None:
    assert parse_qwen3_answer(content) == expected


async def test_qwen3_detected_language_and_silence(servers: Any, engines: Any) -> None:
    server = await servers(text="今天天气很好", language="zh")
    engine = await engines(remote(Qwen3ChatAsrEngine, server.url))
    spoken = await engine.transcribe(request())
    silent = await engine.transcribe(request(pcm_16k=np.zeros(8000, np.float32)))
    assert (spoken.text, spoken.language, spoken.segments) == ("今天天气很好", "zh", ())
    assert (silent.text, silent.language, silent.duration_s) == ("", None, 0.5)


# ---- faults -> error kinds ----------------------------------------------------------------

UNAVAILABLE = [(Fault.SLOW, RemoteTimeout, 504), (Fault.ERROR_500, RemoteUnavailable, 502),
               (Fault.RATE_LIMITED, RemoteUnavailable, 502), (Fault.GARBAGE, RemoteUnavailable, 502),
               (Fault.WRONG_SHAPE, RemoteUnavailable, 502)]
CLIENT_ERRORS = [(Fault.BAD_REQUEST, BadRequest, 400), (Fault.TOO_LARGE, PayloadTooLarge, 413),
                 (Fault.UNPROCESSABLE, BadRequest, 400)]


@pytest.mark.parametrize("cls", ENGINES)
@pytest.mark.parametrize(("fault", "error", "status"), UNAVAILABLE)
async def test_unavailable_faults_mark_the_engine_down(servers: Any, engines: Any, cls: Any, fault: Fault,
                                                       error: type[ServingError], status: int) -> None:
    server = await servers()
    engine = await engines(remote(cls, server.url))
    assert engine.health()["status"] == "healthy"
    server.fault = fault
    started = time.monotonic()
    with pytest.raises(error) as caught:
        await engine.transcribe(request())
    assert time.monotonic() - started < CLIENT_TIMEOUT_S + 1
    assert type(caught.value) is error and caught.value.http_status == status
    assert caught.value.retryable
    health = engine.health()
    assert health["status"] == "degraded" and health["last_error"] == str(caught.value)
    assert not await engine.probe()
    server.fault = None
    assert await engine.probe() and engine.health() == {
        "status": "healthy", "model": "whisper-1", "device": f"remote {server.url}",
        "engine": engine.wire, "last_error": None}


@pytest.mark.parametrize("cls", ENGINES)
@pytest.mark.parametrize(("fault", "error", "status"), CLIENT_ERRORS)
async def test_client_errors_carry_the_remote_message(servers: Any, engines: Any, cls: Any, fault: Fault,
                                                      error: type[ServingError], status: int) -> None:
    server = await servers()
    engine = await engines(remote(cls, server.url, name="vllm-a"))
    server.fault = fault
    with pytest.raises(error) as caught:
        await engine.transcribe(request())
    assert type(caught.value) is error and caught.value.http_status == status
    assert caught.value.message == f"vllm-a rejected the request: fake says no ({fault.value})"
    assert caught.value.param == "file"
    assert engine.health()["status"] == "healthy"  # it answered; the input was at fault


@pytest.mark.parametrize("cls", ENGINES)
async def test_down_at_start_serves_degraded_until_it_answers(servers: Any, engines: Any, cls: Any) -> None:
    server = FakeOpenAIAsr()
    server.port = closed_port()
    engine = await engines(remote(cls, server.url))
    health = engine.health()
    assert health["status"] == "degraded" and "cannot connect" in health["last_error"]
    with pytest.raises(RemoteDown) as caught:
        await engine.transcribe(request())
    assert caught.value.http_status == 503
    await server.start()
    try:
        assert await engine.probe()
        assert (await engine.transcribe(request())).text == "hello from the fake server"
    finally:
        await server.stop()


@pytest.mark.parametrize("cls", ENGINES)
async def test_a_restarted_server_is_used_at_once(servers: Any, engines: Any, cls: Any) -> None:
    server = await servers()
    engine = await engines(remote(cls, server.url))
    await engine.transcribe(request())  # leaves a keep-alive connection in the pool
    await server.stop()
    await server.start()
    assert (await engine.transcribe(request())).text == "hello from the fake server"
    assert engine.health()["status"] == "healthy"


@pytest.mark.parametrize("cls", ENGINES)
async def test_wrong_model_or_key_is_unavailable(servers: Any, engines: Any, cls: Any) -> None:
    server = await servers(model="other", api_key="right")
    engine = await engines(remote(cls, server.url, api_key="right"))
    assert not await engine.probe()
    assert "serves ['other'], not 'whisper-1'" in engine.health()["last_error"]
    with pytest.raises(RemoteUnavailable, match="HTTP 404"):  # not the client's fault: ours
        await engine.transcribe(request())
    wrong_key = await engines(remote(cls, server.url, model="other", api_key="wrong"))
    assert not await wrong_key.probe()
    with pytest.raises(RemoteUnavailable, match="HTTP 401"):
        await wrong_key.transcribe(request())


async def test_api_key_is_never_logged(servers: Any, engines: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server = await servers(api_key="sk-secret-123")
    engine = await engines(remote(OpenAITranscriptionsEngine, server.url, api_key="sk-secret-123"))
    server.fault = Fault.ERROR_500
    with pytest.raises(RemoteUnavailable) as caught:
        await engine.transcribe(request())
    assert caplog.records and "sk-secret" not in caplog.text + str(caught.value) + str(engine.health())


async def test_transcribe_before_start_is_a_programming_error() -> None:
    engine = OpenAITranscriptionsEngine(name="x", base_url="http://127.0.0.1:1", model="m")
    with pytest.raises(RuntimeError, match="start"):
        await engine.transcribe(request())


# ---- the breaker ------------------------------------------------------------------------

def test_breaker_thresholds() -> None:
    breaker = CircuitBreaker(down_failures=1, error_failures=3)
    assert not breaker.record_failure(RemoteUnavailable("500"))
    assert not breaker.record_failure(RemoteTimeout("slow"))
    assert breaker.record_failure(RemoteUnavailable("500 again"))
    assert breaker.is_open and breaker.last_error == "500 again"
    assert not breaker.record_failure(RemoteUnavailable("while open"))  # opened once, not twice
    breaker.close()
    assert not breaker.is_open and breaker.failures == 0 and breaker.last_error is None
    assert breaker.record_failure(RemoteDown("refused"))  # nothing listens: at once
    breaker.close()
    breaker.record_failure(RemoteUnavailable("500"))
    breaker.close()  # a success in between: counting starts over
    assert not breaker.record_failure(RemoteUnavailable("500"))


# ---- failover ---------------------------------------------------------------------------

async def pair(servers: Any, engines: Any, **options: Any) -> tuple[FakeOpenAIAsr, FakeOpenAIAsr,
                                                                    FailoverAsrEngine]:
    primary = await servers(text="from the primary")
    fallback = await servers(text="from the fallback")
    options.setdefault("probe_interval_s", PROBE_INTERVAL_S)
    group = FailoverAsrEngine(
        name="asr", engines=[
            remote(OpenAITranscriptionsEngine, primary.url, name="primary"),
            remote(Qwen3ChatAsrEngine, fallback.url, name="fallback")], **options)
    return primary, fallback, await engines(group)


def breaker_of(group: FailoverAsrEngine, name: str) -> dict[str, Any]:
    return next(e for e in group.health()["engines"] if e["engine"] == name)


async def test_primary_serves_while_it_is_up(servers: Any, engines: Any) -> None:
    _, fallback, group = await pair(servers, engines)
    assert (await group.transcribe(request())).text == "from the primary"
    assert not fallback.received
    health = group.health()
    assert (health["status"], health["serving"], health["model"]) == ("healthy", "primary", "whisper-1")
    assert [(e["engine"], e["breaker"], e["status"]) for e in health["engines"]] == [
        ("primary", "closed", "healthy"), ("fallback", "closed", "healthy")]


@pytest.mark.parametrize("fault", [Fault.SLOW, Fault.ERROR_500, Fault.RATE_LIMITED, Fault.GARBAGE,
                                   Fault.WRONG_SHAPE])
async def test_fails_over_when_the_primary_cannot_serve(servers: Any, engines: Any, fault: Fault) -> None:
    primary, _, group = await pair(servers, engines)
    primary.fault = fault
    assert (await group.transcribe(request())).text == "from the fallback"
    assert breaker_of(group, "primary")["breaker"] == "closed"  # one error opens nothing yet
    assert breaker_of(group, "primary")["failures"] == 1
    assert group.health()["status"] == "degraded"


async def test_fails_over_at_once_when_the_primary_is_down(servers: Any, engines: Any) -> None:
    primary, _, group = await pair(servers, engines)
    await primary.stop()
    # The first send meets the pooled connection the stop closed; the resend, a closed port.
    assert (await group.transcribe(request())).text == "from the fallback"
    assert breaker_of(group, "primary")["breaker"] == "open"
    assert group.health()["serving"] == "fallback"


@pytest.mark.parametrize(("fault", "error"), [(Fault.BAD_REQUEST, BadRequest),
                                              (Fault.TOO_LARGE, PayloadTooLarge)])
async def test_never_fails_over_on_input_errors(servers: Any, engines: Any, fault: Fault,
                                               error: type[ServingError]) -> None:
    primary, fallback, group = await pair(servers, engines)
    primary.fault = fault
    with pytest.raises(error, match="fake says no"):
        await group.transcribe(request())
    assert not fallback.received
    assert breaker_of(group, "primary")["failures"] == 0


async def test_breaker_opens_and_the_probe_brings_the_primary_back(servers: Any, engines: Any) -> None:
    primary, fallback, group = await pair(servers, engines)
    primary.fault = Fault.ERROR_500
    for _ in range(3):
        assert (await group.transcribe(request())).text == "from the fallback"
    assert breaker_of(group, "primary")["breaker"] == "open"
    seen = len(primary.received)
    assert (await group.transcribe(request())).text == "from the fallback"
    assert not [r for r in primary.received[seen:] if r.path == TRANSCRIPTIONS]  # skipped
    primary.fault = None
    await until(lambda: breaker_of(group, "primary")["breaker"] == "closed")
    assert (await group.transcribe(request())).text == "from the primary"
    assert group.health()["status"] == "healthy"
    assert len([r for r in fallback.received if r.path == CHAT]) == 4


async def test_a_stopped_primary_comes_back_when_it_listens_again(servers: Any, engines: Any) -> None:
    primary, _, group = await pair(servers, engines)
    await primary.stop()
    await group.transcribe(request())
    await asyncio.sleep(PROBE_INTERVAL_S * 3)  # probes fail meanwhile
    assert breaker_of(group, "primary")["breaker"] == "open"
    await primary.start()
    await until(lambda: group.health()["serving"] == "primary")
    assert (await group.transcribe(request())).text == "from the primary"


async def test_primary_down_at_start_starts_degraded(servers: Any, engines: Any) -> None:
    fallback = await servers(text="from the fallback")
    primary = FakeOpenAIAsr(text="from the primary")
    primary.port = closed_port()
    group = await engines(FailoverAsrEngine(name="asr", probe_interval_s=PROBE_INTERVAL_S, engines=[
        remote(OpenAITranscriptionsEngine, primary.url, name="primary"),
        remote(OpenAITranscriptionsEngine, fallback.url, name="fallback")]))
    health = group.health()
    assert (health["status"], health["serving"]) == ("degraded", "fallback")
    assert "cannot connect" in breaker_of(group, "primary")["last_error"]
    assert (await group.transcribe(request())).text == "from the fallback"
    await primary.start()
    try:
        await until(lambda: group.health()["status"] == "healthy")
        assert (await group.transcribe(request())).text == "from the primary"
    finally:
        await primary.stop()


async def test_all_down_is_a_503_naming_every_engine(servers: Any, engines: Any) -> None:
    primary, fallback, group = await pair(servers, engines, probe_interval_s=60)
    await primary.stop()
    fallback.fault = Fault.GARBAGE
    with pytest.raises(AllEnginesDown) as caught:
        await group.transcribe(request())
    error = caught.value
    assert (error.http_status, error.kind, error.retryable) == (503, "engines_unavailable", True)
    assert error.message.startswith("no ASR engine of asr can serve now: primary (down: primary: cannot "
                                    "connect to")
    assert "fallback (failed: fallback: /v1/chat/completions answered 200 with a body that is not JSON" \
        in error.message
    assert group.health()["status"] == "degraded"  # the fallback's breaker is not open yet
    for _ in range(2):
        with pytest.raises(AllEnginesDown):
            await group.transcribe(request())
    assert group.health()["status"] == "dead" and group.health()["serving"] is None
    seen = len(fallback.received)
    started = time.monotonic()
    with pytest.raises(AllEnginesDown, match="fallback \\(down"):  # both open: no request at all
        await group.transcribe(request())
    assert time.monotonic() - started < 0.1 and len(fallback.received) == seen


class FlakyLocal(FakeAsr):
    """A local engine (no probe) whose worker dies on demand."""

    dead = False

    async def transcribe(self, request: TranscriptionRequest) -> Transcription:
        if self.dead:
            raise WorkerDied(f"{self.name} worker exited")
        return await super().transcribe(request)


async def test_local_engine_as_a_fallback(servers: Any, engines: Any) -> None:
    primary = await servers(text="from the primary")
    local = FakeAsr(name="local", text="from the local worker")
    group = await engines(FailoverAsrEngine(name="asr", probe_interval_s=PROBE_INTERVAL_S, engines=[
        remote(OpenAITranscriptionsEngine, primary.url, name="primary"), local]))
    await primary.stop()
    assert (await group.transcribe(request())).text == "from the local worker"
    assert group.health()["engines"][1] == {
        "engine": "local", "breaker": "closed", "failures": 0, "status": "healthy", "model": "fake",
        "device": "cpu", "last_error": None}


async def test_local_primary_that_dies_fails_over_and_is_retried_later(servers: Any, engines: Any) -> None:
    fallback = await servers(text="from the remote")
    local = FlakyLocal(name="local", text="from the local worker")
    group = await engines(FailoverAsrEngine(name="asr", probe_interval_s=PROBE_INTERVAL_S, engines=[
        local, remote(OpenAITranscriptionsEngine, fallback.url, name="remote")]))
    local.dead = True
    assert (await group.transcribe(request())).text == "from the remote"
    assert breaker_of(group, "local")["breaker"] == "open"
    local.dead = False  # the worker restarted; without a probe it is simply tried again
    await until(lambda: breaker_of(group, "local")["breaker"] == "closed")
    assert (await group.transcribe(request())).text == "from the local worker"


async def test_other_engine_errors_are_not_failed_over(servers: Any, engines: Any) -> None:
    fallback = await servers()

    class Broken(FakeAsr):
        async def transcribe(self, request: TranscriptionRequest) -> Transcription:
            raise EngineError("the model produced nothing")

    group = await engines(FailoverAsrEngine(name="asr", engines=[
        Broken(name="local"), remote(OpenAITranscriptionsEngine, fallback.url)]))
    with pytest.raises(EngineError, match="produced nothing"):
        await group.transcribe(request())
    assert not fallback.received


async def test_an_engine_that_fails_to_start_fails_the_group(servers: Any) -> None:
    server = await servers()
    remote_engine = remote(OpenAITranscriptionsEngine, server.url)

    class Unloadable(FakeAsr):
        async def start(self) -> None:
            raise RuntimeError("no weights")

    group = FailoverAsrEngine(name="asr", engines=[remote_engine, Unloadable()])
    with pytest.raises(RuntimeError, match="no weights"):
        await group.start()
    assert remote_engine._http is None  # closed again


async def test_aclose_stops_the_probe_task(servers: Any) -> None:
    server = await servers()
    group = FailoverAsrEngine(name="asr", probe_interval_s=PROBE_INTERVAL_S,
                              engines=[remote(OpenAITranscriptionsEngine, server.url)])
    await group.start()
    task = group._probe_task
    assert task is not None and not task.done()
    await group.aclose()
    assert task.cancelled()
