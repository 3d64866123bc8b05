"""The TTS service's routes: /api/synthesize, /v1/audio/speech, /api/speakers, /v1/models.

The data path of a request: JSON (or multipart) body -> text, voice and prompt (a file under
--prompt-dir, see prompt_files.py; base64; or an upload; decoded in a thread) -> the engine's
PCM chunks as they are produced -> an encoder (audio_output) -> the response, streamed chunk
by chunk or whole.
A client that hangs up cancels the handler (aiohttp handler_cancellation), which closes the
engine's generator, which cancels the synthesis in the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator

import numpy as np
from aiohttp import web

from web_demo.server import audio_output
from web_demo.server import tts_protocol as wire
from web_demo.server.audio_input import AudioLimits, decode_native
from web_demo.server.config import TtsServiceConfig
from web_demo.server.engines.base import PcmChunk, SpeakerCreate, SynthesisRequest, TtsEngine
from web_demo.server.engines.tts_models import GENERIC_ALIASES, ServedTtsModel, TtsModels
from web_demo.server.errors import BadRequest, ServingError
from web_demo.server.metrics import Metrics
from web_demo.server.middleware import ERROR_EXTRAS, REQUEST_ID
from web_demo.server.prompt_files import read_prompt_file
from web_demo.server.routes.asr import read_body, read_form

logger = logging.getLogger(__name__)

PLAN_PATH = "/api/synthesize"
OPENAI_PATH = "/v1/audio/speech"
SPEAKERS_PATH = "/api/speakers"
MAX_JSON_OVERHEAD = 256 * 1024  # a body beside its base64 prompt
_json_response = functools.partial(web.json_response, dumps=functools.partial(json.dumps, ensure_ascii=False))


class TtsRoute:
    """The TTS endpoints over one engine or a registry's models (the default answers the plan's
    API and OpenAI's generic model names); owned by the app."""

    def __init__(self, *, engine: TtsEngine, cfg: TtsServiceConfig, metrics: Metrics) -> None:
        self.models = TtsModels.single(engine)
        self.default = self.models.resolve(None)  # the plan's API speaks with the default model
        self.cfg = cfg
        self._prompt_limits = AudioLimits(max_bytes=cfg.max_prompt_bytes, max_seconds=cfg.max_prompt_s)
        self._metrics = metrics
        self._created = int(time.time())

    def mount(self, app: web.Application, *, models_route: bool = True) -> None:
        app.router.add_post(PLAN_PATH, self.plan_synthesize)
        app.router.add_post(OPENAI_PATH, self.openai_speech)
        app.router.add_get(SPEAKERS_PATH, self.list_speakers)
        app.router.add_post(SPEAKERS_PATH, self.add_speaker)
        if models_route:
            app.router.add_get("/v1/models", self.list_models)
        app[ERROR_EXTRAS][PLAN_PATH] = {"success": False}  # the plan's error shape
        app[ERROR_EXTRAS][SPEAKERS_PATH] = {"success": False}

    # -- /api/synthesize ------------------------------------------------------------------
    async def plan_synthesize(self, request: web.Request) -> web.StreamResponse:
        body, upload = await self._plan_body(request)
        prompt = await self._prompt(body, upload)
        synthesis = SynthesisRequest(
            text=body.text, voice=None if prompt else (body.speaker_id or self.cfg.default_speaker),
            prompt_audio=prompt, prompt_text=body.prompt_text, instructions=body.instructions,
            seed=body.seed)
        if body.stream:
            return await self._stream_audio(request, self.default, synthesis, "wav")
        pcm, rate = await self._collect(self.default, synthesis)
        wav = await asyncio.to_thread(audio_output.encode_whole, "wav", pcm, rate)
        return _json_response(wire.plan_body(wav, sample_rate=rate, duration_s=len(pcm) / rate))

    async def _plan_body(self, request: web.Request) -> tuple[wire.PlanSynthesis, bytes | None]:
        limits = dict(max_text_chars=self.cfg.max_text_chars, max_prompt_bytes=self.cfg.max_prompt_bytes)
        if request.content_type == "multipart/form-data":
            form = await read_form(request, file_field="prompt_wav", max_file_bytes=self.cfg.max_prompt_bytes)
            fields = {k: v[-1] for k, v in form.fields.items()}
            return wire.parse_plan(fields, **limits), form.files.get("prompt_wav")
        raw = await read_body(request, max_bytes=self.cfg.max_prompt_bytes * 4 // 3 + MAX_JSON_OVERHEAD)
        return wire.parse_plan(wire.parse_json_object(raw), **limits), None

    async def _prompt(self, body: wire.PlanSynthesis, upload: bytes | None) -> PcmChunk | None:
        if upload is not None and (body.prompt_wav or body.prompt_wav_bytes):
            raise BadRequest("give one prompt: an upload, prompt_wav or prompt_wav_base64",
                             param="prompt_wav")
        data = upload if upload is not None else body.prompt_wav_bytes
        if body.prompt_wav is not None:
            data = await asyncio.to_thread(read_prompt_file, self.cfg.prompt_dir, body.prompt_wav,
                                           max_bytes=self._prompt_limits.max_bytes)
        if data is None:
            return None
        pcm, rate, _ = await asyncio.to_thread(decode_native, data, limits=self._prompt_limits,
                                               param="prompt_wav")
        return PcmChunk(pcm, rate)

    # -- /v1/audio/speech -----------------------------------------------------------------
    async def openai_speech(self, request: web.Request) -> web.StreamResponse:
        raw = await read_body(request, max_bytes=self.cfg.max_text_chars * 4 + MAX_JSON_OVERHEAD)
        body = wire.parse_openai(wire.parse_json_object(raw), max_text_chars=self.cfg.max_text_chars)
        served = self.models.resolve(body.model)
        synthesis = SynthesisRequest(text=body.input, voice=body.voice, speed=body.speed,
                                     instructions=body.instructions, seed=body.seed)
        if body.stream_format == "sse":
            return await self._stream_sse(request, served, synthesis, body.response_format)
        return await self._stream_audio(request, served, synthesis, body.response_format)

    # -- /api/speakers, /v1/models --------------------------------------------------------
    async def list_speakers(self, request: web.Request) -> web.Response:
        return _json_response({"speakers": await self.default.engine.speakers(),
                               "default": self.cfg.default_speaker, "success": True})

    async def add_speaker(self, request: web.Request) -> web.Response:
        form = await read_form(request, file_field="prompt_wav", max_file_bytes=self.cfg.max_prompt_bytes)
        name = (form.fields.get("name") or [""])[-1].strip()
        if not name:
            raise BadRequest("name is required", param="name")
        text = (form.fields.get("prompt_text") or [""])[-1].strip() or None
        pcm, rate, _ = await asyncio.to_thread(decode_native, form.file("prompt_wav"),
                                               limits=self._prompt_limits, param="prompt_wav")
        saved = await self.default.engine.add_speaker(SpeakerCreate(name, PcmChunk(pcm, rate), text))
        return _json_response({"speaker_id": saved, "success": True}, status=201)

    async def list_models(self, request: web.Request) -> web.Response:
        ids = [*self.models.ids, *GENERIC_ALIASES]
        return _json_response({"object": "list", "data": [
            {"id": i, "object": "model", "created": self._created, "owned_by": "fun-audio-chat"}
            for i in ids]})

    # -- responses ------------------------------------------------------------------------
    async def _collect(self, served: ServedTtsModel, synthesis: SynthesisRequest) -> tuple[np.ndarray, int]:
        parts, rate = [], served.engine.sample_rate
        # closed at once when the client hangs up (the handler is cancelled here), which stops
        # the synthesis in the worker, as the streamed responses do
        async with contextlib.aclosing(self._timed(served, synthesis)) as chunks:
            async for chunk in chunks:
                parts.append(chunk.pcm)
                rate = chunk.sample_rate
        return (np.concatenate(parts) if parts else np.zeros(0, np.float32)), rate

    async def _stream_audio(self, request: web.Request, served: ServedTtsModel,
                            synthesis: SynthesisRequest, fmt: str) -> web.StreamResponse:
        """The encoded audio as it is produced (chunked transfer)."""
        headers = {"Content-Type": audio_output.CONTENT_TYPES[fmt]}
        async with self._streaming(request, served, synthesis, fmt, headers) as (response, encoded):
            try:
                async for data in encoded:
                    await response.write(data)
            except ServingError as exc:  # mid-stream: the status is sent, so cut the body short
                logger.warning("synthesis failed mid-stream (%s): %s", exc.kind, exc)
                return response
            await response.write_eof()
        return response

    async def _stream_sse(self, request: web.Request, served: ServedTtsModel,
                          synthesis: SynthesisRequest, fmt: str) -> web.StreamResponse:
        """speech.audio.delta events of the encoded audio, then speech.audio.done."""
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        async with self._streaming(request, served, synthesis, fmt, headers) as (response, encoded):
            try:
                async for data in encoded:
                    await response.write(wire.sse_delta(data))
                await response.write(wire.sse_done(input_chars=len(synthesis.text),
                                                   output_seconds=encoded.seconds))
            except ServingError as exc:
                await response.write(wire.sse_error(exc.message, kind=exc.kind))
            await response.write_eof()
        return response

    @contextlib.asynccontextmanager
    async def _streaming(self, request: web.Request, served: ServedTtsModel, synthesis: SynthesisRequest,
                         fmt: str, headers: dict[str, str],
                         ) -> AsyncIterator[tuple[web.StreamResponse, _Encoded]]:
        """Waits for the first audio before sending the status, so that a request that fails
        at once (unknown speaker, bad prompt) still gets its 4xx and JSON error body."""
        # A streamed FLAC header cannot hold the total length, and libsndfile (soundfile) refuses
        # such a file: FLAC comes whole, at the end, with its length; every other format streams.
        encoder = audio_output.open_encoder(fmt, synthesis.sample_rate or served.engine.sample_rate,
                                            streaming=fmt != "flac")
        async with contextlib.aclosing(self._timed(served, synthesis)) as chunks:
            first = await _next_chunk(chunks)
            response = web.StreamResponse(headers={**headers, "X-Request-Id": request[REQUEST_ID]})
            await response.prepare(request)
            try:
                yield response, _Encoded(encoder, first, chunks)
            except ConnectionResetError:  # the client hung up mid-body: leaving closes the synthesis
                logger.info("client went away mid-stream; synthesis cancelled")

    async def _timed(self, served: ServedTtsModel,
                     synthesis: SynthesisRequest) -> AsyncGenerator[PcmChunk, None]:
        """The engine's chunks; records time to first audio, real-time factor and seconds."""
        started, audio_s, first = time.perf_counter(), 0.0, True
        model = served.id
        async with contextlib.aclosing(served.engine.synthesize(synthesis)) as chunks:
            async for chunk in chunks:
                if first:
                    self._metrics.tts_first_audio.labels(model).observe(time.perf_counter() - started)
                    first = False
                audio_s += len(chunk.pcm) / chunk.sample_rate
                yield chunk
        seconds = time.perf_counter() - started
        self._metrics.tts_audio.labels(model).inc(audio_s)
        if audio_s > 0:
            self._metrics.tts_rtf.labels(model).observe(seconds / audio_s)
        logger.info("synthesized model=%s chars=%d audio_s=%.2f ms=%.0f rtf=%.3f", model,
                    len(synthesis.text), audio_s, seconds * 1000, seconds / max(audio_s, 1e-3))


class _Encoded:
    """Encoded bytes of a synthesis (first chunk already taken), then the encoder's tail."""

    def __init__(self, encoder: audio_output.AudioEncoder, first: PcmChunk | None,
                 rest: AsyncIterator[PcmChunk]) -> None:
        self._encoder, self._first, self._rest = encoder, first, rest
        self.seconds = 0.0  # of audio encoded so far

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunk = self._first
        while chunk is not None:
            self.seconds += len(chunk.pcm) / chunk.sample_rate
            if data := self._encoder.encode(chunk.pcm):
                yield data
            chunk = await _next_chunk(self._rest)
        if tail := self._encoder.finish():
            yield tail


async def _next_chunk(chunks: AsyncIterator[PcmChunk]) -> PcmChunk | None:
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return None
