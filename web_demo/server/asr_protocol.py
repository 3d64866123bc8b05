"""The wire format of the ASR service: form fields in, response bodies out. Pure: no I/O.

Two front doors share one engine call:
- `POST /api/transcribe`, the deployment plan's: fields `audio`, `language` (default 中文),
  `hotwords` (comma-separated) -> `{"text", "language", "success": true}`.
- `POST /v1/audio/transcriptions`, OpenAI's (not vLLM's variant): fields `file`, `model`,
  `language`, `prompt`, `response_format` (json | text | verbose_json | srt | vtt),
  `temperature`, `timestamp_granularities[]`, `stream` and the extension `hotwords`.
  text, srt and vtt are plain-text bodies; stream=true is server-sent events
  `transcript.text.delta` ... `transcript.text.done` whatever the response_format.
- `POST /stream/v1/asr?model_id=...`, the vLLM ASR plan's (seed 000), shaped like the
  one-sentence REST recognition API it comes from: the audio is the raw body
  (`--data-binary @test.wav`), options are query parameters (`model_id`, `format` = pcm for
  headerless 16-bit PCM at `sample_rate`, `language`, `hotwords`) -> `{"task_id", "result",
  "status": 20000000, "message": "SUCCESS", "model_id", "language"}`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from web_demo.server.engines.base import Transcription
from web_demo.server.errors import BadRequest
from web_demo.server.languages import DEFAULT_PLAN_LANGUAGE, Language, english_name, parse_language

RESPONSE_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
GRANULARITIES = ("segment", "word")
MAX_HOTWORDS = 200
MAX_HOTWORD_CHARS = 100
MAX_PROMPT_CHARS = 4000
_HOTWORD_SEPARATORS = re.compile(r"[,，、\n]")  # ASCII and full-width commas, the list comma

Fields = Mapping[str, Sequence[str]]  # multipart text fields; a name may repeat


@dataclass(frozen=True)
class PlanForm:
    """/api/transcribe's fields."""
    language: Language
    hotwords: tuple[str, ...]


@dataclass(frozen=True)
class OpenAIForm:
    """/v1/audio/transcriptions's fields."""
    model: str
    language: Language
    prompt: str | None
    response_format: str
    temperature: float
    word_timestamps: bool  # verbose_json with "word" in timestamp_granularities[]
    stream: bool
    hotwords: tuple[str, ...]


def _one(fields: Fields, name: str) -> str | None:
    values = fields.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(f"field {name!r} was sent {len(values)} times; send it once", param=name)
    return values[0]


def parse_hotwords(value: str | None, *, param: str = "hotwords") -> tuple[str, ...]:
    """"Fun-Audio-Chat,语音助手" (also full-width ， and 、) -> ("Fun-Audio-Chat", "语音助手")."""
    if not value:
        return ()
    words = tuple(w.strip() for w in _HOTWORD_SEPARATORS.split(value) if w.strip())
    if len(words) > MAX_HOTWORDS:
        raise BadRequest(f"{len(words)} hotwords; at most {MAX_HOTWORDS}", param=param)
    if any(len(w) > MAX_HOTWORD_CHARS for w in words):
        raise BadRequest(f"a hotword is longer than {MAX_HOTWORD_CHARS} characters", param=param)
    return words


def parse_plan_form(fields: Fields) -> PlanForm:
    return PlanForm(language=parse_language(_one(fields, "language"), default=DEFAULT_PLAN_LANGUAGE),
                    hotwords=parse_hotwords(_one(fields, "hotwords")))


def parse_openai_form(fields: Fields) -> OpenAIForm:
    model = (_one(fields, "model") or "").strip()
    if not model:
        raise BadRequest("field 'model' is required (the served model id, or whisper-1)", param="model")
    response_format = (_one(fields, "response_format") or "json").strip()
    if response_format not in RESPONSE_FORMATS:
        raise BadRequest(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, "
                         f"got {response_format[:40]!r}", param="response_format")
    granularities = [g.strip() for g in fields.get("timestamp_granularities[]", ())]
    granularities += [g.strip() for g in fields.get("timestamp_granularities", ())]
    for g in granularities:
        if g not in GRANULARITIES:
            raise BadRequest(f"timestamp_granularities[] takes segment and word, got {g[:40]!r}",
                             param="timestamp_granularities[]")
    prompt = _one(fields, "prompt") or None
    if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
        raise BadRequest(f"prompt is longer than {MAX_PROMPT_CHARS} characters", param="prompt")
    return OpenAIForm(
        model=model, language=parse_language(_one(fields, "language")), prompt=prompt,
        response_format=response_format, temperature=_temperature(_one(fields, "temperature")),
        word_timestamps=response_format == "verbose_json" and "word" in granularities,
        stream=_boolean(_one(fields, "stream"), "stream"),
        hotwords=parse_hotwords(_one(fields, "hotwords")))


def _temperature(value: str | None) -> float:
    if value is None or not value.strip():
        return 0.0
    try:
        temperature = float(value)
    except ValueError:
        temperature = math.nan
    if not 0.0 <= temperature <= 1.0:  # also false for nan
        raise BadRequest(f"temperature must be a number from 0 to 1, got {value[:40]!r}",
                         param="temperature")
    return temperature


def _boolean(value: str | None, name: str) -> bool:
    if value is None:
        return False
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no", ""):
        return False
    raise BadRequest(f"{name} must be true or false, got {value[:40]!r}", param=name)


@dataclass(frozen=True)
class StreamAsrQuery:
    """/stream/v1/asr's query parameters."""
    model_id: str | None
    raw_pcm_rate: int | None  # format=pcm: the body is 16-bit little-endian mono at this rate
    language: Language
    hotwords: tuple[str, ...]


STREAM_ASR_FORMATS = ("pcm", "wav", "mp3", "flac", "ogg", "opus", "webm", "m4a", "aac")
RAW_PCM_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
STREAM_ASR_SUCCESS = 20000000  # the status code of the REST API this endpoint follows


def parse_stream_asr_query(query: Mapping[str, str]) -> StreamAsrQuery:
    fmt = (query.get("format") or "").strip().lower()
    if fmt and fmt not in STREAM_ASR_FORMATS:
        raise BadRequest(f"format must be one of {', '.join(STREAM_ASR_FORMATS)}, got {fmt[:40]!r}",
                         param="format")
    rate_text = (query.get("sample_rate") or "16000").strip()
    rate = int(rate_text) if rate_text.isdigit() else 0
    if fmt == "pcm" and rate not in RAW_PCM_RATES:
        raise BadRequest(f"sample_rate for format=pcm must be one of "
                         f"{', '.join(map(str, RAW_PCM_RATES))}, got {rate_text[:20]!r}",
                         param="sample_rate")
    return StreamAsrQuery(
        model_id=(query.get("model_id") or "").strip() or None,
        raw_pcm_rate=rate if fmt == "pcm" else None,
        language=parse_language(query.get("language")),
        hotwords=parse_hotwords(query.get("hotwords")))


def stream_asr_body(t: Transcription, *, task_id: str, model_id: str,
                    language: Language) -> dict[str, Any]:
    return {"task_id": task_id, "result": t.text, "status": STREAM_ASR_SUCCESS, "message": "SUCCESS",
            "model_id": model_id, "language": language.answer(t.language)}


# ---- responses --------------------------------------------------------------------------

def plan_body(t: Transcription, language: Language) -> dict[str, Any]:
    return {"text": t.text, "language": language.answer(t.language), "success": True}


def _usage(t: Transcription) -> dict[str, Any]:
    return {"type": "duration", "seconds": math.ceil(t.duration_s)}  # OpenAI bills whole seconds


def json_body(t: Transcription) -> dict[str, Any]:
    return {"text": t.text, "usage": _usage(t)}


def _clamp(seconds: float, t: Transcription) -> float:
    """Within the audio (Whisper may time the last segment past the end), to the millisecond."""
    return round(min(max(seconds, 0.0), t.duration_s), 3)


def verbose_json_body(t: Transcription, *, temperature: float, words: bool) -> dict[str, Any]:
    """OpenAI's verbose_json; the fields an engine does not report are 0 (tokens empty)."""
    body: dict[str, Any] = {
        "task": "transcribe", "language": english_name(t.language), "duration": round(t.duration_s, 3),
        "text": t.text,
        "segments": [{"id": i, "seek": int(s.start_s * 100), "start": _clamp(s.start_s, t),
                      "end": _clamp(s.end_s, t), "text": s.text, "tokens": [],
                      "temperature": temperature, "avg_logprob": s.avg_logprob or 0.0,
                      "compression_ratio": s.compression_ratio or 0.0,
                      "no_speech_prob": s.no_speech_prob or 0.0}
                     for i, s in enumerate(t.segments)],
        "usage": _usage(t)}
    if words:
        body["words"] = [{"word": w.text, "start": _clamp(w.start_s, t), "end": _clamp(w.end_s, t)}
                         for s in t.segments for w in s.words]
    return body


def _cues(t: Transcription) -> list[tuple[float, float, str]]:
    cues = [(_clamp(s.start_s, t), _clamp(s.end_s, t), s.text.strip()) for s in t.segments
            if s.text.strip()]
    if not cues and t.text:
        cues = [(0.0, t.duration_s, t.text)]  # an engine without segments: one cue
    return cues


def _clock(seconds: float, decimal: str) -> str:
    ms = max(0, round(seconds * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{decimal}{ms % 1000:03d}"


def srt_text(t: Transcription) -> str:
    return "".join(f"{i}\n{_clock(a, ',')} --> {_clock(b, ',')}\n{text}\n\n"
                   for i, (a, b, text) in enumerate(_cues(t), start=1))


def vtt_text(t: Transcription) -> str:
    return "WEBVTT\n\n" + "".join(f"{_clock(a, '.')} --> {_clock(b, '.')}\n{text}\n\n"
                                  for a, b, text in _cues(t))


def text_deltas(t: Transcription) -> list[str]:
    """One delta per segment, cut from `t.text` itself so that the deltas join to it exactly."""
    deltas, cursor = [], 0
    for segment in t.segments:
        piece = segment.text.strip()
        at = t.text.find(piece, cursor) if piece else -1
        if at < 0:
            continue
        deltas.append(t.text[cursor:at + len(piece)])
        cursor = at + len(piece)
    if cursor < len(t.text):
        deltas.append(t.text[cursor:])
    return deltas


def sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


def stream_events(t: Transcription) -> list[bytes]:
    events = [sse({"type": "transcript.text.delta", "delta": d}) for d in text_deltas(t)]
    return [*events, sse({"type": "transcript.text.done", "text": t.text})]


def models_body(ids: Sequence[str], *, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [model_body(i, created=created) for i in ids]}


def model_body(model_id: str, *, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "fun-audio-chat"}
