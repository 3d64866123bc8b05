"""A fake OpenAI-compatible ASR server that answers the way vLLM 0.32 does, with faults to inject.

Routes: /health, /v1/models, /v1/audio/transcriptions (vLLM's form fields and deviations:
response_format=text answers JSON, srt/vtt are a 400, verbose_json's duration is a string)
and /v1/chat/completions (Qwen3-ASR: `language Chinese<asr_text>...`, `language None` for
silence, the text alone when the assistant turn was prefilled). It records every request it
gets (fields, the decoded WAV, the JSON body) so tests can check what an engine sent.

Faults (`server.fault = Fault.X`): slow, 500, 429, garbage (non-JSON 200) and shape (JSON of
the wrong shape) hit every route, /health included, so a probe fails too; the client errors
400, 413 and 422 hit the transcription routes only. "Down" is `await server.stop()`: the port
is closed, and `start()` listens on it again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import soundfile as sf
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.typedefs import Handler
from aiohttp.web_request import FileField

from utils.audio import MODEL_SAMPLE_RATE

_NAMES = {"zh": "Chinese", "en": "English", "ja": "Japanese", "yue": "Cantonese"}


class Fault(StrEnum):
    SLOW = "slow"
    ERROR_500 = "500"
    RATE_LIMITED = "429"
    GARBAGE = "garbage"
    WRONG_SHAPE = "shape"
    BAD_REQUEST = "400"
    TOO_LARGE = "413"
    UNPROCESSABLE = "422"


_CLIENT_FAULTS = {Fault.BAD_REQUEST: 400, Fault.TOO_LARGE: 413, Fault.UNPROCESSABLE: 422}


@dataclass
class Received:
    """One request as the fake saw it."""
    path: str
    authorization: str | None
    fields: dict[str, list[str]]  # multipart text fields (a name may repeat)
    audio_16k: np.ndarray | None  # the uploaded WAV or data URL, decoded; float32 [T]
    body: dict[str, Any] | None  # a JSON body (chat completions)


def error_json(status: int, message: str, *, param: str | None = None) -> web.Response:
    kinds = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError",
             413: "BadRequestError", 422: "BadRequestError", 429: "RateLimitError"}
    body = {"error": {"message": message, "type": kinds.get(status, "InternalServerError"),
                      "param": param, "code": status}}
    return web.json_response(body, status=status)


def decode_wav(data: bytes) -> np.ndarray:
    pcm, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    assert rate == MODEL_SAMPLE_RATE and pcm.ndim == 1, (rate, pcm.shape)
    return np.asarray(pcm, dtype=np.float32)


class FakeOpenAIAsr:
    """One fake server; the test that starts it stops it."""

    def __init__(self, *, model: str = "whisper-1", text: str = "hello from the fake server",
                 language: str = "en", api_key: str | None = None, verbose_json: bool = True,
                 language_names: bool = False, slow_s: float = 5.0) -> None:
        self.model = model
        self.text = text
        self.language = language  # what it "detects" when the request names none
        self.api_key = api_key
        self.verbose_json = verbose_json  # False: a model without timestamps (400 on verbose_json)
        self.language_names = language_names  # verbose_json says "english" (OpenAI), not "en"
        self.slow_s = slow_s
        self.fault: Fault | None = None
        self.received: list[Received] = []
        self.port = 0
        self._server: TestServer | None = None
        self._release = asyncio.Event()  # ends slow answers at stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listens (again) on its port; the first start picks a free one."""
        app = web.Application(middlewares=[self._faults])
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/audio/transcriptions", self._transcriptions)
        app.router.add_post("/v1/chat/completions", self._chat)
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

    def last(self, path: str) -> Received:
        return [r for r in self.received if r.path == path][-1]

    @web.middleware
    async def _faults(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        fault = self.fault
        if fault is None:
            return await handler(request)
        if fault in _CLIENT_FAULTS:
            if request.method != "POST":
                return await handler(request)
            self.received.append(Received(request.path, None, {}, None, None))
            return error_json(_CLIENT_FAULTS[fault], f"fake says no ({fault.value})", param="file")
        if fault is Fault.SLOW:
            with contextlib.suppress(TimeoutError):  # slow, not stuck: it answers in the end
                await asyncio.wait_for(self._release.wait(), self.slow_s)
            return await handler(request)
        self.received.append(Received(request.path, None, {}, None, None))
        if fault is Fault.ERROR_500:
            return error_json(500, "fake internal error")
        if fault is Fault.RATE_LIMITED:
            return error_json(429, "fake rate limit")
        if fault is Fault.GARBAGE:
            return web.Response(text="<html>502 Bad Gateway</html>", content_type="text/html")
        return web.json_response({"object": "list", "unexpected": True})  # WRONG_SHAPE

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return error_json(401, "invalid api key")
        return None

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response()  # vLLM: 200, empty body

    async def _models(self, request: web.Request) -> web.Response:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": 0, "owned_by": "vllm"}]})

    async def _transcriptions(self, request: web.Request) -> web.Response:
        fields: dict[str, list[str]] = {}
        audio = None
        form = await request.post()
        for name, value in form.items():
            if isinstance(value, FileField):
                audio = decode_wav(value.file.read())
            else:
                fields.setdefault(name, []).append(str(value))
        self.received.append(Received(request.path, request.headers.get("Authorization"),
                                      fields, audio, None))
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        if audio is None:
            return error_json(400, "file is required", param="file")
        if fields.get("model", [""])[0] != self.model:
            return error_json(404, f"The model `{fields.get('model')}` does not exist.", param="model")
        fmt = fields.get("response_format", ["json"])[0]
        duration = len(audio) / MODEL_SAMPLE_RATE
        if fmt in ("srt", "vtt"):  # vLLM's deviation
            return error_json(400, "Currently only support response_format `text`, `json` or "
                              "`verbose_json`", param="response_format")
        if fmt != "verbose_json":  # json, and text too: vLLM answers text as JSON
            return web.json_response({"text": self.text,
                                      "usage": {"type": "duration", "seconds": math.ceil(duration)}})
        if not self.verbose_json:
            return error_json(400, "verbose_json is not supported by this model", param="response_format")
        language = fields.get("language", [self.language])[0]
        words = "word" in fields.get("timestamp_granularities[]", [])
        return web.json_response(self._verbose(language, duration, words=words))

    def _verbose(self, language: str, duration: float, *, words: bool) -> dict[str, Any]:
        """Two segments (the halves of the text), each word an equal share of the audio."""
        tokens = self.text.split()
        step = duration / max(len(tokens), 1)
        half = max(len(tokens) // 2, 1)
        timed = [{"word": f" {w}", "start": round(i * step, 3), "end": round((i + 1) * step, 3)}
                 for i, w in enumerate(tokens)]
        segments = [{"id": i, "seek": 0, "start": part[0]["start"], "end": part[-1]["end"],
                     "text": " " + " ".join(str(w["word"]).strip() for w in part), "tokens": [1, 2],
                     "temperature": 0.0, "avg_logprob": -0.25, "compression_ratio": 1.2,
                     "no_speech_prob": 0.01}
                    for i, part in enumerate([timed[:half], timed[half:]]) if part]
        named = _NAMES.get(language, language).lower() if self.language_names else language
        body: dict[str, Any] = {"task": "transcribe", "language": named, "duration": str(duration),
                                "text": " " + self.text, "segments": segments}
        if words:
            body["words"] = timed
        return body

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        audio = _data_url_audio(body)
        self.received.append(Received(request.path, request.headers.get("Authorization"), {}, audio, body))
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        if audio is None:
            return error_json(400, "no audio_url in the user message", param="messages")
        if body.get("model") != self.model:
            return error_json(404, f"The model `{body.get('model')}` does not exist.", param="model")
        if body.get("continue_final_message"):  # the prefilled "language X<asr_text>" goes on
            content = self.text
        elif not np.any(np.abs(audio) > 1e-3):
            content = "language None<asr_text>"
        else:
            content = f"language {_NAMES.get(self.language, self.language)}<asr_text>{self.text}"
        return web.json_response({
            "id": "chatcmpl-fake", "object": "chat.completion", "model": self.model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})


def _data_url_audio(body: dict[str, Any]) -> np.ndarray | None:
    for message in body.get("messages", []):
        if message.get("role") != "user" or not isinstance(message.get("content"), list):
            continue
        for part in message["content"]:
            url = part.get("audio_url", {}).get("url", "") if part.get("type") == "audio_url" else ""
            prefix = "data:audio/wav;base64,"
            if url.startswith(prefix):
                return decode_wav(base64.b64decode(url[len(prefix):]))
    return None
