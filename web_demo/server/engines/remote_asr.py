"""ASR engines that call a model served elsewhere over HTTP (vLLM or any OpenAI-compatible server).

- `OpenAITranscriptionsEngine` posts the audio to `/v1/audio/transcriptions` (Whisper,
  Fun-ASR-Nano or Qwen3-ASR on vLLM, a hosted API).
- `Qwen3ChatAsrEngine` sends it to `/v1/chat/completions` the way Qwen3-ASR expects it.

The audio always travels as a 16 kHz mono 16-bit WAV. Every failure is sorted into one of two
families, which is what failover (failover.py) acts on:
- the remote rejected the input (HTTP 400, 413, 422): BadRequest / PayloadTooLarge with the
  remote's message; another engine would reject it too, so never fail over;
- the remote could not serve (connect error, timeout, 5xx, 429, other 4xx, an answer that is not
  the JSON we expect): `RemoteUnavailable` (502), `RemoteDown` (503: nothing listens or the
  connection failed) or `RemoteTimeout` (504); the engine reports itself degraded until a
  request or a probe succeeds again.
"""

from __future__ import annotations

import base64
import bisect
import functools
import json
import logging
import math
import re
from collections.abc import Callable
from typing import Any, TypeVar

import aiohttp

from utils.audio import MODEL_SAMPLE_RATE, wav_bytes
from web_demo.server.engines.base import Segment, Transcription, TranscriptionRequest, Word
from web_demo.server.errors import BadRequest, PayloadTooLarge, ServingError
from web_demo.server.languages import english_name, parse_language

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

CONNECT_TIMEOUT_S = 5.0  # a host that drops SYNs must not hold a request for the whole timeout
PROBE_TIMEOUT_S = 2.0  # /health and /v1/models answer at once on a live server
KEEPALIVE_S = 4.0  # vLLM's uvicorn drops idle connections after 5 s: ours go first
_CLIENT_ERRORS = {400, 413, 422}  # the input's fault; everything else non-200 is the remote's
# Failures of a connection that was open before the request (ClientConnectorError, a new
# connection failing, is a ClientOSError too but is caught before these).
_STALE_CONNECTION = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


class RemoteUnavailable(ServingError):
    """The remote server could not serve this request; another engine may. Marks the engine down."""

    http_status = 502
    kind = "remote_unavailable"
    retryable = True


class RemoteDown(RemoteUnavailable):
    """Nothing answers at the remote's address (connection refused, DNS, connect timeout)."""

    http_status = 503
    kind = "remote_down"
    retry_after_s = 5  # about one probe interval: when a restarted remote is noticed


class RemoteTimeout(RemoteUnavailable):
    """The remote accepted the request but did not answer within the engine's timeout."""

    http_status = 504
    kind = "remote_timeout"


def root_url(base_url: str) -> str:
    """"http://host:8000", "http://host:8000/" or "http://host:8000/v1" -> "http://host:8000"."""
    root = base_url.rstrip("/")
    return root[:-len("/v1")] if root.endswith("/v1") else root


def iso_language(name: Any) -> str | None:
    """What a server reports ("en", "english", "English", "Chinese") -> ISO-639-1; None if unknown."""
    if not isinstance(name, str) or not name.strip():
        return None
    try:
        return parse_language(name.split(",")[0]).code  # "Chinese,English": the first one leads
    except BadRequest:  # a name we have no code for: the server's answer is still good
        return None


class _RemoteEngine:
    """What both remote engines share: the HTTP session, the up/down state, the probe.

    Owned by whoever built it (AsrModels or a FailoverAsrEngine), which calls start() and
    aclose(). Never logs the API key (it lives only in the session's headers).
    """

    wire = ""  # which API the engine speaks, for health()

    def __init__(self, *, name: str, base_url: str, model: str, api_key: str | None = None,
                 timeout_s: float = 120.0) -> None:
        self.name = name
        self.model = model
        self.base_url = root_url(base_url)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(timeout_s, CONNECT_TIMEOUT_S))
        self._probe_timeout = aiohttp.ClientTimeout(total=min(timeout_s, PROBE_TIMEOUT_S))
        self._http: aiohttp.ClientSession | None = None
        self._up = False  # until start()'s probe or a request says otherwise
        self.last_error: str | None = "not started"

    async def start(self) -> None:
        """Opens the session and probes once; a remote that is down leaves the engine degraded."""
        connector = aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE_S)
        self._http = aiohttp.ClientSession(connector=connector, headers=self._headers, timeout=self._timeout)
        if not await self.probe():
            logger.warning("remote ASR %s (%s at %s) is down at start: %s; serving degraded until "
                           "it answers", self.name, self.model, self.base_url, self.last_error)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def health(self) -> dict[str, Any]:
        return {"status": "healthy" if self._up else "degraded", "model": self.model,
                "device": f"remote {self.base_url}", "engine": self.wire, "last_error": self.last_error}

    async def probe(self) -> bool:
        """True when the server answers /health (or has none) and lists our model in /v1/models."""
        try:
            await self._probe_once()
        except (RemoteUnavailable, BadRequest) as exc:  # a 400 on /v1/models: not a usable server
            self._mark_down(exc)
            return False
        self._mark_up()
        return True

    async def _probe_once(self) -> None:
        status, _ = await self._send("GET", "/health", timeout=self._probe_timeout)
        if status not in (200, 404):  # 404: an OpenAI-compatible server without /health
            raise RemoteUnavailable(f"{self.name}: /health answered HTTP {status}")
        status, body = await self._send("GET", "/v1/models", timeout=self._probe_timeout)
        self._check_models(self._decode(status, body, "/v1/models"))

    def _check_models(self, answer: Any) -> None:
        try:
            ids = [str(m["id"]) for m in answer["data"]]
        except (KeyError, TypeError) as exc:
            raise RemoteUnavailable(f"{self.name}: /v1/models answered {str(answer)[:200]}") from exc
        if self.model not in ids:  # a wrong --served-model-name would fail every request
            raise RemoteUnavailable(f"{self.name}: the server serves {ids[:10]}, not {self.model!r}")

    async def _call(self, path: str, parse: Callable[[Any], _T], **send: Any) -> _T:
        """POSTs once -> `parse` of the JSON answer, or the classified error; tracks up/down."""
        try:
            status, body = await self._send("POST", path, **send)
            result = parse(self._decode(status, body, path))
        except RemoteUnavailable as exc:
            self._mark_down(exc)
            raise
        except BadRequest:
            self._mark_up()  # it answered, and correctly so
            raise
        self._mark_up()
        return result

    async def _send(self, method: str, path: str, *, form: Callable[[], aiohttp.FormData] | None = None,
                    json: dict[str, Any] | None = None,
                    timeout: aiohttp.ClientTimeout | None = None) -> tuple[int, bytes]:
        """One HTTP exchange -> (status, body); transport failures -> RemoteUnavailable kinds.

        A pooled keep-alive connection the server has just closed (it restarted, or its idle
        timeout won the race) fails before any answer: such a request is sent once more, on a
        fresh connection. Transcription has no side effects, so this is safe. `form` builds the
        multipart body per attempt (aiohttp consumes a FormData when it sends it)."""
        if self._http is None:
            raise RuntimeError(f"remote ASR {self.name}: start() first")
        url = self.base_url + path
        exchange = functools.partial(self._exchange, self._http, method, url, form=form, json=json,
                                     timeout=timeout or self._timeout)
        try:
            return await exchange()
        except _STALE_CONNECTION:
            logger.debug("remote ASR %s: %s dropped a pooled connection; sending again", self.name, url)
        try:
            return await exchange()
        except _STALE_CONNECTION as exc:
            raise RemoteUnavailable(f"{self.name}: {url} dropped the connection: {exc!r}") from exc

    async def _exchange(self, http: aiohttp.ClientSession, method: str, url: str, *,
                        form: Callable[[], aiohttp.FormData] | None, json: dict[str, Any] | None,
                        timeout: aiohttp.ClientTimeout) -> tuple[int, bytes]:
        try:
            async with http.request(method, url, data=form() if form else None, json=json,
                                    timeout=timeout) as response:
                return response.status, await response.read()
        except (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError) as exc:
            raise RemoteDown(f"{self.name}: cannot connect to {url}: {exc}") from exc
        except TimeoutError as exc:  # also aiohttp's read timeouts
            raise RemoteTimeout(f"{self.name}: {url} did not answer in time") from exc
        except _STALE_CONNECTION:
            raise
        except aiohttp.ClientError as exc:  # a broken answer
            raise RemoteUnavailable(f"{self.name}: {url} failed: {exc!r}") from exc

    def _decode(self, status: int, body: bytes, path: str) -> Any:
        if status == 200:
            try:
                return json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise RemoteUnavailable(f"{self.name}: {path} answered 200 with a body that is not "
                                        f"JSON: {body[:100]!r}") from None
        message, param = error_detail(body)
        if status in _CLIENT_ERRORS:
            error = PayloadTooLarge if status == 413 else BadRequest
            raise error(f"{self.name} rejected the request: {message}", param=param)
        raise RemoteUnavailable(f"{self.name}: {path} answered HTTP {status}: {message}")

    def _mark_up(self) -> None:
        if not self._up:
            logger.info("remote ASR %s at %s is up", self.name, self.base_url)
        self._up, self.last_error = True, None

    def _mark_down(self, error: ServingError) -> None:
        if self._up:
            logger.warning("remote ASR %s is down: %s", self.name, error)
        self._up, self.last_error = False, str(error)

    def _unreadable(self, what: str, answer: Any) -> RemoteUnavailable:
        return RemoteUnavailable(f"{self.name}: {what}: {str(answer)[:200]}")


def error_detail(body: bytes) -> tuple[str, str | None]:
    """The message and param of an error body: OpenAI's {"error": {...}}, older vLLM's flat
    {"object": "error", "message"}, FastAPI's {"detail"}, or the raw text."""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return text[:300] or "(empty body)", None
    inner = data.get("error") if isinstance(data, dict) else None
    if isinstance(inner, dict):
        data = inner
    if isinstance(data, dict) and ("message" in data or "detail" in data):
        param = data.get("param")
        return str(data.get("message") or data.get("detail"))[:500], param if isinstance(param, str) else None
    return text[:300], None


def _pcm_wav(request: TranscriptionRequest) -> bytes:
    return wav_bytes(request.pcm_16k, MODEL_SAMPLE_RATE)


def _duration_s(request: TranscriptionRequest) -> float:
    # Ours, not the server's: we know it exactly, and vLLM has sent it as a string.
    return len(request.pcm_16k) / MODEL_SAMPLE_RATE


# ---- /v1/audio/transcriptions --------------------------------------------------------------

class OpenAITranscriptionsEngine(_RemoteEngine):
    """Transcribes through a server's /v1/audio/transcriptions (vLLM 0.32 or OpenAI).

    Always asks for verbose_json (segments, words, the detected language); a server that
    rejects it (some vLLM models have no timestamps) is asked for json from then on. We never
    ask text, srt or vtt: vLLM answers text as JSON and rejects srt/vtt, and the route builds
    those from segments itself.
    """

    wire = "openai-transcriptions"

    def __init__(self, *, name: str, base_url: str, model: str, api_key: str | None = None,
                 timeout_s: float = 120.0) -> None:
        super().__init__(name=name, base_url=base_url, model=model, api_key=api_key, timeout_s=timeout_s)
        self._verbose = True  # False once the server rejected verbose_json

    async def transcribe(self, request: TranscriptionRequest) -> Transcription:
        wav = _pcm_wav(request)
        parse = functools.partial(self._parse, request=request)
        if self._verbose:
            try:
                return await self._call("/v1/audio/transcriptions", parse,
                                        form=lambda: self._form(request, wav, verbose=True))
            except BadRequest as exc:
                if not _rejects_verbose(exc):
                    raise
                logger.info("remote ASR %s rejects verbose_json (%s); asking json from now on",
                            self.name, exc)
                self._verbose = False
        return await self._call("/v1/audio/transcriptions", parse,
                                form=lambda: self._form(request, wav, verbose=False))

    def _form(self, request: TranscriptionRequest, wav: bytes, *, verbose: bool) -> aiohttp.FormData:
        form = aiohttp.FormData()
        form.add_field("file", wav, filename="audio.wav", content_type="audio/wav")
        form.add_field("model", self.model)
        form.add_field("temperature", str(request.temperature))
        form.add_field("response_format", "verbose_json" if verbose else "json")
        if verbose and request.word_timestamps:  # word alone would drop the segments
            form.add_field("timestamp_granularities[]", "word")
            form.add_field("timestamp_granularities[]", "segment")
        if request.language:
            form.add_field("language", request.language)
        if request.prompt:
            form.add_field("prompt", request.prompt)
        if request.hotwords:  # vLLM's extension; OpenAI ignores unknown fields
            form.add_field("hotwords", ",".join(request.hotwords))
        return form

    def _parse(self, answer: Any, request: TranscriptionRequest) -> Transcription:
        if not isinstance(answer, dict) or not isinstance(answer.get("text"), str):
            raise self._unreadable("the transcription has no text", answer)
        try:
            segments = verbose_segments(answer.get("segments") or (), answer.get("words") or ())
        except (KeyError, TypeError, ValueError) as exc:
            raise self._unreadable(f"unreadable segments ({exc!r})", answer) from None
        return Transcription(text=answer["text"].strip(),
                             language=iso_language(answer.get("language")) or request.language,
                             duration_s=_duration_s(request), segments=segments)


def _rejects_verbose(error: BadRequest) -> bool:
    return error.param == "response_format" or "verbose_json" in error.message


def _word(raw: Any) -> Word:
    probability = raw.get("probability")
    return Word(start_s=float(raw["start"]), end_s=float(raw["end"]), text=str(raw["word"]).strip(),
                probability=None if probability is None else float(probability))


def _optional(raw: Any, key: str) -> float | None:
    value = raw.get(key)
    return None if value is None else float(value)


def verbose_segments(raw_segments: Any, raw_words: Any) -> tuple[Segment, ...]:
    """verbose_json's segments, with the top-level words (OpenAI puts them there) put back into
    the segment they start in. A server that times words inside its segments keeps those."""
    segments = [Segment(start_s=float(s["start"]), end_s=float(s["end"]), text=str(s["text"]).strip(),
                        words=tuple(_word(w) for w in s.get("words") or ()),
                        avg_logprob=_optional(s, "avg_logprob"),
                        compression_ratio=_optional(s, "compression_ratio"),
                        no_speech_prob=_optional(s, "no_speech_prob"))
                for s in raw_segments]
    words = sorted((_word(w) for w in raw_words), key=lambda w: w.start_s)
    if not words or any(s.words for s in segments):
        return tuple(segments)
    if not segments:  # words without segments: one segment holds them all
        return (Segment(words[0].start_s, words[-1].end_s, " ".join(w.text for w in words), tuple(words)),)
    starts = [s.start_s for s in segments]
    placed: list[list[Word]] = [[] for _ in segments]
    for word in words:
        placed[max(bisect.bisect_right(starts, word.start_s) - 1, 0)].append(word)
    return tuple(Segment(s.start_s, s.end_s, s.text, tuple(p), s.avg_logprob, s.compression_ratio,
                         s.no_speech_prob) for s, p in zip(segments, placed))


# ---- Qwen3-ASR over /v1/chat/completions ---------------------------------------------------

# "language Chinese<asr_text>今天天气很好" ("language None<asr_text>" for audio without speech)
_QWEN3_ANSWER = re.compile(r"\s*language\s+([^<]*?)\s*<asr_text>(.*)", re.DOTALL)


def max_answer_tokens(duration_s: float) -> int:
    """A bound on a transcript's tokens, so a generation that loops ends in tokens, not only at
    the timeout: speech carries well under 16 tokens a second, plus the language prefix."""
    return 64 + 16 * math.ceil(duration_s)


def parse_qwen3_answer(content: str) -> tuple[str | None, str]:
    """A Qwen3-ASR answer -> (ISO language or None, text). An answer without the prefix (the
    language was forced, or another model) is all text."""
    match = _QWEN3_ANSWER.match(content)
    if match is None:
        return None, content.strip()
    name, text = match.group(1), match.group(2).strip()
    if name.lower() == "none":
        return None, ""  # Qwen3-ASR heard no speech; anything after the tag is not a transcript
    return iso_language(name), text


def qwen3_language_name(code: str) -> str:
    """An ISO code -> the English name Qwen3-ASR writes after "language" ("zh" -> "Chinese")."""
    name = english_name(code)
    if name == code:
        raise BadRequest(f"language {code!r} has no name that Qwen3-ASR knows; leave it out to "
                         "detect the language", param="language")
    return name.title()


class Qwen3ChatAsrEngine(_RemoteEngine):
    """Transcribes with Qwen3-ASR served by vLLM's /v1/chat/completions.

    The audio goes as an `audio_url` data URL in the user turn; hotwords and the prompt as a
    system message (Qwen3-ASR's context). A language is forced the way Qwen3-ASR's own
    toolkit does it: the assistant turn is prefilled with "language X<asr_text>" and vLLM
    continues it (`continue_final_message`), so the answer is the text alone. Qwen3-ASR times
    nothing: transcriptions have no segments.
    """

    wire = "qwen3-chat"

    async def transcribe(self, request: TranscriptionRequest) -> Transcription:
        content = await self._call("/v1/chat/completions", self._content, json=self._body(request))
        language, text = parse_qwen3_answer(content)
        return Transcription(text=text, language=request.language or language,
                             duration_s=_duration_s(request))

    def _body(self, request: TranscriptionRequest) -> dict[str, Any]:
        data_url = "data:audio/wav;base64," + base64.b64encode(_pcm_wav(request)).decode("ascii")
        messages: list[dict[str, Any]] = []
        context = "\n".join(filter(None, [request.prompt, ", ".join(request.hotwords)]))
        if context:
            messages.append({"role": "system", "content": context})
        messages.append({"role": "user",
                         "content": [{"type": "audio_url", "audio_url": {"url": data_url}}]})
        body: dict[str, Any] = {"model": self.model, "messages": messages,
                                "temperature": request.temperature,
                                "max_tokens": max_answer_tokens(_duration_s(request))}
        if request.language:
            prefix = f"language {qwen3_language_name(request.language)}<asr_text>"
            messages.append({"role": "assistant", "content": prefix})
            body |= {"continue_final_message": True, "add_generation_prompt": False}
        return body

    def _content(self, answer: Any) -> str:
        try:
            content = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise self._unreadable("not a chat completion", answer) from None
        if content is None:
            return ""
        if not isinstance(content, str):
            raise self._unreadable("the completion's content is not text", answer)
        return content

