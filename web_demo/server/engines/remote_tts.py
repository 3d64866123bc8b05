"""A TTS engine that calls a speech model served elsewhere over OpenAI's /v1/audio/speech.

Any server of that route will do: another instance of our TTS service, vLLM-Omni serving a
speech model (Qwen3-TTS, CosyVoice3, ...), OpenAI itself. The engine asks for `pcm` (OpenAI's:
24 kHz signed 16-bit little-endian mono, no header) with `stream_format="audio"` (OpenAI's
default, and what makes vLLM-Omni stream raw audio instead of answering once it is done), and
yields the audio as it arrives, resampled on the fly when the request asks for another rate.

Failures are sorted into the families of remote_asr.py, which failover acts on:
- the remote rejected the input (400, 422, 413, or 404 naming the voice): BadRequest,
  PayloadTooLarge or NotFound with the remote's message. Another engine would reject it too.
- the remote could not serve: RemoteDown (nothing listens, the connection failed),
  RemoteTimeout (no answer, or a gap in the stream, longer than `timeout_s`) or
  RemoteUnavailable (5xx, 429, any other 4xx such as a wrong key, model or route, a 200 that is
  not audio, a stream cut short). The engine reports itself degraded until a request or a
  probe succeeds again.
An error after some audio was yielded is raised all the same: the caller decides what half a
sentence is worth.

Voice cloning: OpenAI's request has no field for a prompt. vLLM-Omni takes one as `ref_audio`
(a URL or a data URL) and `ref_text`. With `voice_cloning=True`, a request's prompt travels
that way, as a WAV data URL. By default a request with a prompt is a BadRequest, because a
server that ignores unknown fields (our own TTS service among them) would answer in its default
voice without saying so. A voice can instead be saved on our TTS service (add_speaker, its
POST /api/speakers) and then named as `voice`. A request's seed goes as vLLM-Omni's `seed`. A
server without that field ignores it or answers 400, which reaches the caller as a BadRequest.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any, TypeVar

import aiohttp
import numpy as np
import soxr

from utils.audio import as_mono_float32, wav_bytes
from web_demo.server.engines.base import PcmChunk, SpeakerCreate, SynthesisRequest
from web_demo.server.engines.remote_asr import (
    CONNECT_TIMEOUT_S,
    KEEPALIVE_S,
    PROBE_TIMEOUT_S,
    RemoteDown,
    RemoteTimeout,
    RemoteUnavailable,
    error_detail,
    root_url,
)
from web_demo.server.errors import BadRequest, NotFound, PayloadTooLarge, ServingError

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

SPEECH_PATH = "/v1/audio/speech"
SPEAKERS_PATH = "/api/speakers"  # our TTS service's: GET lists, POST saves
VOICES_PATH = "/v1/audio/voices"  # vLLM-Omni's (and other servers'): GET lists
OPENAI_PCM_RATE = 24_000  # OpenAI's response_format=pcm is always 24 kHz
_CLIENT_ERRORS: dict[int, type[BadRequest]] = {400: BadRequest, 413: PayloadTooLarge, 422: BadRequest}
# Failures of a connection that was open before the request (ClientConnectorError, a new
# connection failing, is a ClientOSError too but is let through before these).
_STALE_CONNECTION = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


class PcmDecoder:
    """The body of a pcm answer (s16le, in pieces of any length) -> float32 PCM at `to_rate`.

    One per synthesis. A piece may end inside a sample: its odd byte waits for the next piece.
    One soxr stream resamples the whole answer. Resampling each piece on its own would restart
    the filter at every piece, which clicks and loses samples at each boundary.
    """

    def __init__(self, from_rate: int, to_rate: int) -> None:
        self._odd = b""
        self._resampler = (None if from_rate == to_rate else
                           soxr.ResampleStream(from_rate, to_rate, 1, dtype="float32", quality="HQ"))

    @property
    def dangling(self) -> bool:
        """Whether the bytes so far end inside a sample."""
        return bool(self._odd)

    def push(self, data: bytes) -> np.ndarray:
        """-> float32 [T], maybe empty: the resampler holds back about a filter's length."""
        data = self._odd + data
        whole = len(data) - len(data) % 2
        self._odd = data[whole:]
        pcm = as_mono_float32(np.frombuffer(data[:whole], dtype="<i2"))
        return self._resample(pcm, last=False)

    def finish(self) -> np.ndarray:
        """The audio the resampler still holds; float32 [T]. A dangling byte is dropped."""
        return self._resample(np.zeros(0, np.float32), last=True)

    def _resample(self, pcm: np.ndarray, *, last: bool) -> np.ndarray:
        if self._resampler is None:
            return pcm
        return np.asarray(self._resampler.resample_chunk(pcm, last=last), dtype=np.float32)


class OpenAISpeechEngine:
    """Synthesises through a server's /v1/audio/speech. It is a TtsEngine, and a ProbedEngine
    (failover.py) through probe().

    Owned by whoever built it, which calls start() and aclose(). The API key lives only in
    the session's headers and is never logged.
    """

    wire = "openai-speech"  # which API the engine speaks, for health()

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None,
                 voice: str | None = None, timeout_s: float = 60.0, name: str = "remote-tts",
                 sample_rate: int = OPENAI_PCM_RATE, voice_cloning: bool = False) -> None:
        self.name = name
        self.model = model
        self.voice = voice  # for requests that name none; None: the server's own default
        self.sample_rate = sample_rate  # the remote's pcm rate: 24 kHz unless it is not OpenAI's
        self.base_url = root_url(base_url)
        self._voice_cloning = voice_cloning
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # No total limit, because a long text streams for longer than any fixed one. timeout_s
        # bounds the wait for the answer and every gap between two pieces of it.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(timeout_s, CONNECT_TIMEOUT_S),
                                              sock_read=timeout_s)
        self._probe_timeout = aiohttp.ClientTimeout(total=min(timeout_s, PROBE_TIMEOUT_S))
        self._http: aiohttp.ClientSession | None = None
        self._up = False  # until start()'s probe or a request says otherwise
        self.last_error: str | None = "not started"

    async def start(self) -> None:
        """Opens the session and probes once. A remote that is down leaves the engine degraded."""
        connector = aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE_S)
        self._http = aiohttp.ClientSession(connector=connector, headers=self._headers, timeout=self._timeout)
        if not await self.probe():
            logger.warning("remote TTS %s (%s at %s) is down at start: %s; serving degraded until "
                           "it answers", self.name, self.model, self.base_url, self.last_error)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def health(self) -> dict[str, Any]:
        return {"name": self.name, "status": "healthy" if self._up else "degraded", "model": self.model,
                "url": self.base_url, "device": f"remote {self.base_url}", "engine": self.wire,
                "last_error": self.last_error}

    async def probe(self) -> bool:
        """True when the server answers /health (or has none) and lists our model in /v1/models."""
        try:
            await self._probe_once()
        except RemoteUnavailable as exc:
            self._mark_down(exc)
            return False
        self._mark_up()
        return True

    async def synthesize(self, request: SynthesisRequest) -> AsyncGenerator[PcmChunk, None]:
        """Streams the remote's audio at request.sample_rate (or the remote's own rate).

        Closing the generator early (contextlib.aclosing) closes the connection, so the
        remote stops generating."""
        body = self._body(request)  # a prompt it cannot send fails before anything is sent
        rate = request.sample_rate or self.sample_rate
        decoder = PcmDecoder(self.sample_rate, rate)
        async with aclosing(self._pieces(body)) as pieces:
            async for data in pieces:
                pcm = decoder.push(data)
                if pcm.size:
                    yield PcmChunk(pcm, rate)
        if decoder.dangling:
            logger.warning("remote TTS %s: the audio ended inside a sample; its last byte is dropped",
                           self.name)
        tail = decoder.finish()
        if tail.size:
            yield PcmChunk(tail, rate)

    async def speakers(self) -> list[str]:
        """The voices the remote lists: our TTS service's /api/speakers, else the /v1/audio/voices
        of vLLM-Omni and others. OpenAI lists none; then it is the engine's default voice, if set."""
        for path, key in ((SPEAKERS_PATH, "speakers"), (VOICES_PATH, "voices")):
            status, body = await self._exchange("GET", path, timeout=self._probe_timeout)
            if status != 404:
                return self._answer(path, status, body, functools.partial(_voice_names, key=key))
        return [self.voice] if self.voice else []

    async def add_speaker(self, request: SpeakerCreate) -> str:
        """Saves a voice on the remote with our TTS service's POST /api/speakers -> its id, which
        a request's `voice` can then name. A remote without that route cannot (BadRequest)."""
        status, body = await self._exchange("POST", SPEAKERS_PATH, form=lambda: _speaker_form(request))
        if status in (404, 405):
            raise BadRequest(f"{self.name} cannot save voices: the remote has no POST {SPEAKERS_PATH}",
                             param="prompt_wav")
        if status not in (200, 201):
            raise self._status_error(status, body, SPEAKERS_PATH)
        return self._answer(SPEAKERS_PATH, status, body, lambda a: str(a["speaker_id"]))

    def _body(self, request: SynthesisRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "input": request.text, "response_format": "pcm",
                                "stream_format": "audio", "speed": request.speed}
        voice = request.voice or self.voice
        if voice:  # no voice at all: the server's default, or its 400 saying one is required
            body["voice"] = voice
        if request.instructions:
            body["instructions"] = request.instructions
        if request.seed is not None:
            body["seed"] = request.seed
        if request.prompt_audio is not None:
            body |= self._prompt_fields(request.prompt_audio, request.prompt_text)
        return body

    def _prompt_fields(self, prompt: PcmChunk, prompt_text: str | None) -> dict[str, str]:
        if not self._voice_cloning:
            raise BadRequest(f"{self.name} cannot clone a voice: OpenAI's /v1/audio/speech has no field "
                             "for a prompt; name a voice instead", param="prompt_wav")
        wav = wav_bytes(prompt.pcm, prompt.sample_rate)
        fields = {"ref_audio": "data:audio/wav;base64," + base64.b64encode(wav).decode("ascii")}
        if prompt_text:
            fields["ref_text"] = prompt_text
        return fields

    async def _pieces(self, body: dict[str, Any]) -> AsyncGenerator[bytes, None]:
        """The answer's body as it arrives, with every failure classified and the up/down state
        kept. The caller closes it (aclosing), which closes the response."""
        url = self.base_url + SPEECH_PATH
        try:
            response = await self._open(url, body)
            try:
                async for data in response.content.iter_any():
                    yield data
            finally:
                _end(response)
        except RemoteUnavailable as exc:
            self._mark_down(exc)
            raise
        except BadRequest:
            self._mark_up()  # it answered, and correctly so
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:  # also a stream cut short or stalled
            error = self._transport_error(exc, url)
            self._mark_down(error)
            raise error from exc
        self._mark_up()

    async def _open(self, url: str, body: dict[str, Any]) -> aiohttp.ClientResponse:
        """POSTs the request -> a 200 answer that is audio, its body still unread."""
        response = await self._send("POST", url, json=body)
        if response.status != 200:
            try:
                detail = await response.read()
            finally:
                response.release()
            raise self._status_error(response.status, detail)
        content_type = response.content_type
        # Any bytes are valid pcm, so the type is what tells an error page or a JSON reply
        # (a proxy, a server that ignored response_format) from audio.
        if content_type.startswith("text/") or content_type.endswith("json"):
            response.close()
            raise RemoteUnavailable(f"{self.name}: {SPEECH_PATH} answered 200 with {content_type}, "
                                    "not audio")
        return response

    async def _send(self, method: str, url: str, *, form: Callable[[], aiohttp.FormData] | None = None,
                    **options: Any) -> aiohttp.ClientResponse:
        """One request -> its response, body unread. If the pooled keep-alive connection it went
        out on was just closed by the server (it restarted, or its idle timeout won the race),
        the request fails before any answer and is sent once more on a fresh connection. Every
        request here is safe to repeat. `form` builds a multipart body per attempt, because
        aiohttp consumes a FormData when it sends it."""
        if self._http is None:
            raise RuntimeError(f"remote TTS {self.name}: start() first")
        try:
            return await self._http.request(method, url, data=form() if form else None, **options)
        except aiohttp.ClientConnectorError:
            raise
        except _STALE_CONNECTION:
            logger.debug("remote TTS %s: %s dropped a pooled connection; sending again", self.name, url)
        return await self._http.request(method, url, data=form() if form else None, **options)

    async def _probe_once(self) -> None:
        status, _ = await self._exchange("GET", "/health", timeout=self._probe_timeout)
        if status not in (200, 404):  # 404: an OpenAI-compatible server without /health
            raise RemoteUnavailable(f"{self.name}: /health answered HTTP {status}")
        status, body = await self._exchange("GET", "/v1/models", timeout=self._probe_timeout)
        ids = self._answer("/v1/models", status, body, lambda a: [str(m["id"]) for m in a["data"]])
        if self.model not in ids:  # a wrong --served-model-name would fail every request
            raise RemoteUnavailable(f"{self.name}: the server serves {ids[:10]}, not {self.model!r}")

    async def _exchange(self, method: str, path: str, **options: Any) -> tuple[int, bytes]:
        """A small request (a probe, a listing, an upload) -> (status, body)."""
        url = self.base_url + path
        try:
            response = await self._send(method, url, **options)
            async with response:
                return response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._transport_error(exc, url) from exc

    def _answer(self, path: str, status: int, body: bytes, read: Callable[[Any], _T]) -> _T:
        """`read` of a 200 (201) JSON answer; another status, or another shape, is RemoteUnavailable."""
        if status not in (200, 201):
            raise RemoteUnavailable(f"{self.name}: {path} answered HTTP {status}: {error_detail(body)[0]}")
        try:
            return read(json.loads(body))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # ValueError: not JSON
            raise RemoteUnavailable(f"{self.name}: {path} answered {body[:200]!r}") from exc

    def _status_error(self, status: int, body: bytes, path: str = SPEECH_PATH) -> ServingError:
        message, param = error_detail(body)
        if status in _CLIENT_ERRORS:
            return _CLIENT_ERRORS[status](f"{self.name} rejected the request: {message}", param=param)
        # A 404 is the input's fault only when it names the voice; an unknown model or route is
        # how this engine was set up, and another engine may serve.
        if status == 404 and param == "voice":
            return NotFound(f"{self.name} rejected the request: {message}", param=param)
        return RemoteUnavailable(f"{self.name}: {path} answered HTTP {status}: {message}")

    def _transport_error(self, exc: BaseException, url: str) -> RemoteUnavailable:
        if isinstance(exc, (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError)):
            return RemoteDown(f"{self.name}: cannot connect to {url}: {exc}")
        if isinstance(exc, TimeoutError):  # also aiohttp's read timeouts
            return RemoteTimeout(f"{self.name}: {url} went silent for longer than the timeout")
        if isinstance(exc, aiohttp.ClientPayloadError):
            return RemoteUnavailable(f"{self.name}: {url} cut its answer short: {exc}")
        return RemoteUnavailable(f"{self.name}: {url} failed: {exc!r}")

    def _mark_up(self) -> None:
        if not self._up:
            logger.info("remote TTS %s at %s is up", self.name, self.base_url)
        self._up, self.last_error = True, None

    def _mark_down(self, error: ServingError) -> None:
        if self._up:
            logger.warning("remote TTS %s is down: %s", self.name, error)
        self._up, self.last_error = False, str(error)


def _voice_names(answer: Any, key: str) -> list[str]:
    """A voice listing's `key`: names, or objects with an id or a name (servers differ)."""
    return [v if isinstance(v, str) else str(v.get("id") or v["name"]) for v in answer[key]]


def _speaker_form(request: SpeakerCreate) -> aiohttp.FormData:
    """Our TTS service's POST /api/speakers form: name, prompt_text and the prompt as a WAV."""
    form = aiohttp.FormData()
    form.add_field("name", request.name)
    if request.prompt_text:
        form.add_field("prompt_text", request.prompt_text)
    wav = wav_bytes(request.prompt_audio.pcm, request.prompt_audio.sample_rate)
    form.add_field("prompt_wav", wav, filename="prompt.wav", content_type="audio/wav")
    return form


def _end(response: aiohttp.ClientResponse) -> None:
    """After the whole body, the connection goes back to the pool. Otherwise it is closed:
    for HTTP/1.1 that is the only way to tell the server to stop generating."""
    if response.content.at_eof():
        response.release()
    else:
        response.close()
