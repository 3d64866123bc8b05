"""A fake OpenAI /v1/audio/speech server that streams a deterministic tone, with faults to inject.

Routes: /health, /v1/models and /v1/audio/speech. The speech route checks its JSON body the way
OpenAI does: model (404 model_not_found when it is not ours), input, voice (a name or
{"id": ...}), response_format, speed and stream_format. A bad field is a 400 with OpenAI's
error JSON. It then streams `tone_24k(input, speed)`, 24 kHz s16le mono, in `chunk_bytes`
pieces, one every `chunk_delay_s`. The default piece length is odd, so pieces end inside a
sample. pcm goes out raw, and wav behind a streaming header (sizes 0xFFFFFFFF, as OpenAI sends
it). The other valid formats (mp3, opus, aac, flac) and stream_format=sse get a 501, because
nothing here needs them.

Fields OpenAI does not know (vLLM-Omni's ref_audio, ref_text and seed) are accepted and
ignored. `voice_api` adds a voice listing: VLLM_OMNI is GET /v1/audio/voices, and OURS is our
TTS service's GET /api/speakers plus POST /api/speakers, which saves an uploaded voice under a
name that `voice` may then use.

It records every request (the JSON body, the Authorization header) and how its stream ended:
"finished", "disconnected" (the client closed the connection first) or "dropped" (Fault.DROP).

Faults (`server.fault = Fault.X`): slow (no answer for `slow_s`), 500, 429 and garbage (an HTML
200) hit every route, /health included, so a probe fails too. The client errors (400, 413,
422, 404 for the voice) hit the speech route only. So do drop (the connection is cut halfway
through the audio) and stall (halfway through, nothing more for `slow_s`). "Down" is
`await server.stop()`: the port is closed, and `start()` listens on it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import struct
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import soundfile as sf
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.typedefs import Handler
from aiohttp.web_request import FileField

PCM_RATE = 24_000
SAMPLES_PER_CHAR = 240  # 10 ms of audio per input character, at speed 1
MAX_INPUT_CHARS = 4096
OPENAI_VOICES = frozenset({"alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage",
                           "shimmer", "verse", "marin", "cedar"})
RESPONSE_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
SPEECH = "/v1/audio/speech"
VLLM_OMNI = "/v1/audio/voices"
OURS = "/api/speakers"


class Fault(StrEnum):
    SLOW = "slow"
    ERROR_500 = "500"
    RATE_LIMITED = "429"
    GARBAGE = "garbage"
    BAD_REQUEST = "400"
    TOO_LARGE = "413"
    UNPROCESSABLE = "422"
    VOICE_NOT_FOUND = "404"
    DROP = "drop"
    STALL = "stall"


_CLIENT_FAULTS = {Fault.BAD_REQUEST: 400, Fault.TOO_LARGE: 413, Fault.UNPROCESSABLE: 422,
                  Fault.VOICE_NOT_FOUND: 404}
_STREAM_FAULTS = (Fault.DROP, Fault.STALL)


@dataclass
class Received:
    """One request as the fake saw it, and how its answer went."""
    path: str
    authorization: str | None
    body: Any  # the JSON body; None when it was not JSON
    bytes_sent: int = 0  # of audio (a wav header included)
    outcome: str | None = None  # "finished" | "disconnected" | "dropped"; None: streaming, or refused
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # set when its stream ended


@dataclass(frozen=True)
class SavedVoice:
    """A voice saved through POST /api/speakers."""
    pcm: np.ndarray  # float32 [T], at `sample_rate`
    sample_rate: int
    prompt_text: str | None


def tone_24k(text: str, speed: float = 1.0) -> np.ndarray:
    """What the fake streams for `text`: a 440 Hz tone at half scale, int16 [T]."""
    t = np.arange(round(len(text) * SAMPLES_PER_CHAR / speed)) / PCM_RATE
    return np.round(16384 * np.sin(2 * np.pi * 440 * t)).astype("<i2")


def openai_error(status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> web.Response:
    """OpenAI's error body: {"error": {"message", "type", "param", "code"}}."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status)


def wav_stream_header(sample_rate: int) -> bytes:
    """A 16-bit mono WAV header whose sizes say "unknown" (0xFFFFFFFF), as streamed WAV has."""
    unknown = 0xFFFFFFFF
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", unknown, b"WAVE", b"fmt ", 16, 1, 1, sample_rate,
                       sample_rate * 2, 2, 16, b"data", unknown)


class FakeOpenAITts:
    """One fake server; the test that starts it stops it."""

    def __init__(self, *, model: str = "gpt-4o-mini-tts", api_key: str | None = None,
                 voices: frozenset[str] = OPENAI_VOICES, chunk_bytes: int = 4801,
                 chunk_delay_s: float = 0.005, slow_s: float = 5.0, voice_api: str | None = None) -> None:
        self.model = model
        self.api_key = api_key
        self.voices = voices
        self.chunk_bytes = chunk_bytes
        self.chunk_delay_s = chunk_delay_s
        self.slow_s = slow_s
        self.voice_api = voice_api  # None (OpenAI: no listing), VLLM_OMNI or OURS
        self.saved: dict[str, SavedVoice] = {}
        self.fault: Fault | None = None
        self.received: list[Received] = []
        self.port = 0
        self._server: TestServer | None = None
        self._release = asyncio.Event()  # ends slow answers and stalls at stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listens (again) on its port; the first start picks a free one."""
        app = web.Application(middlewares=[self._faults])
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post(SPEECH, self._speech)
        if self.voice_api is not None:
            app.router.add_get(self.voice_api, self._list_voices)
        if self.voice_api == OURS:
            app.router.add_post(OURS, self._save_voice)
        self._release.clear()
        self._server = TestServer(app, host="127.0.0.1", port=self.port or None)
        await self._server.start_server()
        assert self._server.port is not None
        self.port = self._server.port

    async def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            await self._server.close()
            self._server = None

    def last(self) -> Received:
        return [r for r in self.received if r.path == SPEECH][-1]

    async def _record(self, request: web.Request) -> Received:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = None
        got = Received(request.path, request.headers.get("Authorization"), body)
        self.received.append(got)
        return got

    async def _slow(self) -> None:
        with contextlib.suppress(TimeoutError):  # slow, not stuck: it goes on in the end
            await asyncio.wait_for(self._release.wait(), self.slow_s)

    @web.middleware
    async def _faults(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        fault = self.fault
        if fault is None or fault in _STREAM_FAULTS or (fault in _CLIENT_FAULTS and request.method != "POST"):
            return await handler(request)
        if fault is Fault.SLOW:
            await self._slow()
            return await handler(request)
        if request.method == "POST":
            await self._record(request)
        if fault in _CLIENT_FAULTS:
            status = _CLIENT_FAULTS[fault]
            return openai_error(status, f"fake says no ({fault.value})",
                                param="voice" if fault is Fault.VOICE_NOT_FOUND else "input")
        if fault is Fault.ERROR_500:
            return openai_error(500, "fake internal error", kind="server_error")
        if fault is Fault.RATE_LIMITED:
            return openai_error(429, "fake rate limit", kind="requests", code="rate_limit_exceeded")
        return web.Response(text="<html>502 Bad Gateway</html>", content_type="text/html")  # GARBAGE

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return openai_error(401, "Incorrect API key provided.", code="invalid_api_key")
        return None

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response()  # vLLM: 200, empty body

    async def _models(self, request: web.Request) -> web.Response:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": 0, "owned_by": "openai"}]})

    async def _list_voices(self, request: web.Request) -> web.Response:
        names = sorted(self.voices)
        if self.voice_api == OURS:
            return web.json_response({"speakers": names, "default": names[0], "success": True})
        return web.json_response({"voices": names, "uploaded_voices": []})

    async def _save_voice(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.received.append(Received(request.path, request.headers.get("Authorization"), None))
        name, upload = str(form.get("name") or "").strip(), form.get("prompt_wav")
        if not name or not isinstance(upload, FileField):
            return openai_error(400, "name and a prompt_wav file are required",
                                param="prompt_wav" if name else "name")
        pcm, rate = sf.read(io.BytesIO(upload.file.read()), dtype="float32")
        text = form.get("prompt_text")
        self.saved[name] = SavedVoice(pcm, int(rate), str(text) if text is not None else None)
        self.voices = self.voices | {name}
        return web.json_response({"speaker_id": name, "success": True}, status=201)

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        got = await self._record(request)
        refusal = self._unauthorized(request) or self._invalid(got.body)
        if refusal is not None:
            return refusal
        body: dict[str, Any] = got.body
        fmt = body.get("response_format", "mp3")
        if fmt not in ("pcm", "wav") or body.get("stream_format", "audio") != "audio":
            return openai_error(501, f"the fake streams pcm and wav audio only, not {fmt} "
                                f"({body.get('stream_format')})", kind="server_error")
        audio = tone_24k(body["input"], float(body.get("speed", 1.0))).tobytes()
        if fmt == "wav":
            audio = wav_stream_header(PCM_RATE) + audio
        return await self._stream(request, got, audio, "audio/pcm" if fmt == "pcm" else "audio/wav")

    def _invalid(self, body: Any) -> web.Response | None:
        """OpenAI's answer to a body it rejects; None when the body is good."""
        if not isinstance(body, dict):
            return openai_error(400, "We could not parse the JSON body of your request.")
        for name in ("model", "input", "voice"):
            if name not in body:
                return openai_error(400, f"Missing required parameter: '{name}'.", param=name,
                                    code="missing_required_parameter")
        text, speed = body["input"], body.get("speed", 1.0)
        voice = body["voice"].get("id") if isinstance(body["voice"], dict) else body["voice"]
        if not isinstance(text, str) or not 0 < len(text) <= MAX_INPUT_CHARS:
            return openai_error(400, f"'input' must be a string of 1 to {MAX_INPUT_CHARS} characters.",
                                param="input", code="string_above_max_length")
        if voice not in self.voices:
            return openai_error(400, f"Invalid value: '{voice}'. Supported values are: "
                                f"{', '.join(sorted(self.voices))}.", param="voice", code="invalid_value")
        if body.get("response_format", "mp3") not in RESPONSE_FORMATS:
            return openai_error(400, f"Invalid value: '{body['response_format']}'. Supported values are: "
                                f"{', '.join(RESPONSE_FORMATS)}.", param="response_format",
                                code="invalid_value")
        if body.get("stream_format", "audio") not in ("sse", "audio"):
            return openai_error(400, f"Invalid value: '{body['stream_format']}'. Supported values are: "
                                "'sse' and 'audio'.", param="stream_format", code="invalid_value")
        if isinstance(speed, bool) or not isinstance(speed, int | float):
            return openai_error(400, f"Invalid type for 'speed': expected a decimal, but got {speed!r}.",
                                param="speed", code="invalid_type")
        if not 0.25 <= speed <= 4.0:
            return openai_error(400, f"Invalid 'speed': {speed}. Expected a value between 0.25 and 4.0.",
                                param="speed",
                                code="decimal_below_min_value" if speed < 0.25 else "decimal_above_max_value")
        if body["model"] != self.model:
            return openai_error(404, f"The model `{body['model']}` does not exist or you do not have "
                                "access to it.", param="model", code="model_not_found")
        return None

    async def _stream(self, request: web.Request, got: Received, audio: bytes,
                      content_type: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type})
        response.enable_chunked_encoding()
        await response.prepare(request)
        pieces = math.ceil(len(audio) / self.chunk_bytes)
        try:
            for index in range(pieces):
                if index == pieces // 2 and self.fault in _STREAM_FAULTS:
                    if self.fault is Fault.DROP:
                        got.outcome = "dropped"
                        assert request.transport is not None
                        request.transport.close()
                        return response
                    await self._slow()
                await asyncio.sleep(self.chunk_delay_s)
                piece = audio[index * self.chunk_bytes:(index + 1) * self.chunk_bytes]
                await response.write(piece)
                got.bytes_sent += len(piece)
            await response.write_eof()
            got.outcome = "finished"
        except ConnectionResetError:  # aiohttp's "cannot write to closing transport" is one
            got.outcome = "disconnected"
        except asyncio.CancelledError:  # how aiohttp ends a handler whose client has gone
            got.outcome = "disconnected"
            raise
        finally:
            got.ended.set()
        return response
