"""The ASR service's routes: /api/transcribe, /v1/audio/transcriptions, /stream/v1/asr, /v1/models.

The data path of a request: multipart body -> fields and the file's bytes (or the raw body of
/stream/v1/asr), in memory, under the upload limit (`read_form`, `read_body`) -> 16 kHz PCM
(audio_input, in a thread) -> the model's engine -> a body (asr_protocol). Every failure
raises a ServingError, which the shared middleware renders as the one JSON error body
(plus "success": false on /api/transcribe).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from dataclasses import dataclass, field

from aiohttp import BodyPartReader, web

from utils.audio import MODEL_SAMPLE_RATE
from web_demo.server import asr_protocol as wire
from web_demo.server.audio_input import AudioLimits, DecodedAudio, decode_raw_pcm16, decode_upload
from web_demo.server.config import AsrServiceConfig
from web_demo.server.engines.asr_models import AsrModels, ServedModel
from web_demo.server.engines.base import Transcription, TranscriptionRequest
from web_demo.server.errors import BadRequest, PayloadTooLarge
from web_demo.server.languages import Language
from web_demo.server.metrics import Metrics
from web_demo.server.middleware import ERROR_EXTRAS, REQUEST_ID

logger = logging.getLogger(__name__)

PLAN_PATH = "/api/transcribe"
OPENAI_PATH = "/v1/audio/transcriptions"
STREAM_ASR_PATH = "/stream/v1/asr"  # the vLLM ASR plan's (seed 000) raw-body endpoint
STREAM_ASR_HEALTH_PATH = "/stream/v1/asr/health"
MAX_FIELD_BYTES = 64 * 1024  # one text field (prompt, hotwords, ...)
MAX_FORM_OVERHEAD = 1024 * 1024  # everything in a form beside the audio file
MAX_PARTS = 32
# Chinese text as text ("中文", not "\u4e2d\u6587"): the plan's curl users read these bodies.
_json_response = functools.partial(web.json_response, dumps=functools.partial(json.dumps, ensure_ascii=False))


@dataclass
class UploadForm:
    """A multipart form read into memory: text fields (a name may repeat) and file parts."""
    fields: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)

    def file(self, name: str) -> bytes:
        if name in self.files:
            return self.files[name]
        hint = f" (this request has a file in {sorted(self.files)[0][:40]!r})" if self.files else ""
        raise BadRequest(f"no audio file: send it as the multipart file field {name!r}{hint}", param=name)


async def read_form(request: web.Request, *, file_field: str, max_file_bytes: int) -> UploadForm:
    """Reads a multipart/form-data body; the file may have max_file_bytes, the rest 1 MiB."""
    if request.content_type != "multipart/form-data":
        raise BadRequest(f"send multipart/form-data with the audio file in the {file_field!r} field "
                         f"(got {request.content_type[:60]!r})", param=file_field)
    budget = max_file_bytes + MAX_FORM_OVERHEAD
    too_large = PayloadTooLarge(f"the audio file may have at most {max_file_bytes} bytes", param=file_field)
    if request.content_length is not None and request.content_length > budget:
        raise too_large  # before reading any of it
    form, parts = UploadForm(), 0
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            parts += 1
            if parts > MAX_PARTS or not isinstance(part, BodyPartReader):
                raise BadRequest(f"a form of at most {MAX_PARTS} flat parts is accepted", param=None)
            name = (part.name or "")[:100]
            if part.filename is not None or name == file_field:
                if name in form.files:
                    raise BadRequest(f"more than one file in field {name!r}", param=name)
                cap = min(max_file_bytes, budget)
                form.files[name] = await _read_capped(part, cap, too_large)
                budget -= len(form.files[name])
                continue
            limit = BadRequest(f"field {name!r} is longer than {MAX_FIELD_BYTES} bytes", param=name)
            raw = await _read_capped(part, min(MAX_FIELD_BYTES, budget), limit)
            budget -= len(raw)
            try:
                form.fields.setdefault(name, []).append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise BadRequest(f"field {name!r} is not UTF-8 text", param=name) from None
    except ValueError as exc:  # aiohttp: a broken boundary, headers or a truncated body
        raise BadRequest(f"malformed multipart body: {str(exc)[:200]}", param=None) from exc
    return form


async def read_body(request: web.Request, *, max_bytes: int) -> bytes:
    """A raw request body of at most max_bytes (refused before reading when it says it is larger)."""
    too_large = PayloadTooLarge(f"the audio may have at most {max_bytes} bytes", param="body")
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large
    buf = bytearray()
    while chunk := await request.content.read(256 * 1024):
        buf += chunk
        if len(buf) > max_bytes:
            raise too_large
    return bytes(buf)


async def _read_capped(part: BodyPartReader, cap: int, error: BadRequest) -> bytes:
    buf = bytearray()
    while chunk := await part.read_chunk(256 * 1024):
        buf += chunk
        if len(buf) > cap:
            raise error
    return bytes(buf)


class AsrRoute:
    """The ASR endpoints over one service's models; owned by the app."""

    def __init__(self, *, models: AsrModels, cfg: AsrServiceConfig, metrics: Metrics) -> None:
        self.models = models
        self.limits = AudioLimits(max_bytes=cfg.max_upload_bytes, max_seconds=cfg.max_audio_s)
        self._metrics = metrics
        self._created = int(time.time())

    def mount(self, app: web.Application) -> None:
        app.router.add_post(PLAN_PATH, self.plan_transcribe)
        app.router.add_post(OPENAI_PATH, self.openai_transcribe)
        app.router.add_post(STREAM_ASR_PATH, self.stream_asr)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/v1/models/{model}", self.get_model)
        app[ERROR_EXTRAS][PLAN_PATH] = {"success": False}  # the plan's error shape

    async def plan_transcribe(self, request: web.Request) -> web.Response:
        form = await read_form(request, file_field="audio", max_file_bytes=self.limits.max_bytes)
        fields = wire.parse_plan_form(form.fields)
        audio = await self._decode(form.file("audio"), "audio")
        served = self.models.resolve(None)
        t = await self._transcribe(served, TranscriptionRequest(
            pcm_16k=audio.pcm_16k, language=fields.language.code, hotwords=fields.hotwords),
            fields.language)
        return _json_response(wire.plan_body(t, fields.language))

    async def openai_transcribe(self, request: web.Request) -> web.StreamResponse:
        form = await read_form(request, file_field="file", max_file_bytes=self.limits.max_bytes)
        fields = wire.parse_openai_form(form.fields)
        served = self.models.resolve(fields.model)
        audio = await self._decode(form.file("file"), "file")
        t = await self._transcribe(served, TranscriptionRequest(
            pcm_16k=audio.pcm_16k, language=fields.language.code, hotwords=fields.hotwords,
            prompt=fields.prompt, temperature=fields.temperature,
            word_timestamps=fields.word_timestamps), fields.language)
        if fields.stream:
            return await self._stream(request, t)
        if fields.response_format == "text":
            return web.Response(text=t.text + "\n", content_type="text/plain", charset="utf-8")
        if fields.response_format == "srt":
            return web.Response(text=wire.srt_text(t), content_type="text/plain", charset="utf-8")
        if fields.response_format == "vtt":
            return web.Response(text=wire.vtt_text(t), content_type="text/vtt", charset="utf-8")
        if fields.response_format == "verbose_json":
            return _json_response(wire.verbose_json_body(
                t, temperature=fields.temperature, words=fields.word_timestamps))
        return _json_response(wire.json_body(t))

    async def stream_asr(self, request: web.Request) -> web.Response:
        query = wire.parse_stream_asr_query(request.query)
        served = self.models.resolve(query.model_id, param="model_id")
        data = await read_body(request, max_bytes=self.limits.max_bytes)
        if query.raw_pcm_rate is not None:
            audio = await asyncio.to_thread(decode_raw_pcm16, data, query.raw_pcm_rate,
                                            limits=self.limits, param="body")
        else:
            audio = await self._decode(data, "body")
        t = await self._transcribe(served, TranscriptionRequest(
            pcm_16k=audio.pcm_16k, language=query.language.code, hotwords=query.hotwords),
            query.language)
        return _json_response(wire.stream_asr_body(t, task_id=request[REQUEST_ID], model_id=served.id,
                                                   language=query.language))

    async def list_models(self, request: web.Request) -> web.Response:
        return _json_response(wire.models_body(self.models.ids, created=self._created))

    async def get_model(self, request: web.Request) -> web.Response:
        asked = request.match_info["model"]
        self.models.resolve(asked)  # 404 unless served (or an alias)
        return _json_response(wire.model_body(asked, created=self._created))

    async def _decode(self, data: bytes, param: str) -> DecodedAudio:
        # Decoding and resampling take milliseconds per second of audio: off the event loop.
        return await asyncio.to_thread(decode_upload, data, limits=self.limits, param=param)

    async def _transcribe(self, served: ServedModel, request: TranscriptionRequest,
                          language: Language) -> Transcription:
        served.check_language(request.language, language.asked)
        started = time.perf_counter()
        try:
            t = await served.engine.transcribe(request)
        except BadRequest as exc:
            if exc.param == "language" and type(exc) is BadRequest:
                raise BadRequest(f"model {served.id} cannot transcribe language {language.asked!r}: "
                                 f"{exc}", param="language") from exc
            raise
        seconds = time.perf_counter() - started
        audio_s = len(request.pcm_16k) / MODEL_SAMPLE_RATE
        self._metrics.asr_audio.labels(served.id).inc(audio_s)
        if audio_s > 0:
            self._metrics.asr_rtf.labels(served.id).observe(seconds / audio_s)
        logger.info("transcribed model=%s audio_s=%.2f ms=%.0f rtf=%.3f language=%s",
                    served.id, audio_s, seconds * 1000, seconds / max(audio_s, 1e-3), t.language)
        return t

    async def _stream(self, request: web.Request, t: Transcription) -> web.StreamResponse:
        """Server-sent events; the engine is not streaming, so one delta per segment."""
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Request-Id": request[REQUEST_ID]})
        await response.prepare(request)
        for event in wire.stream_events(t):
            await response.write(event)
        await response.write_eof()
        return response
