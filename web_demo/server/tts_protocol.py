"""The TTS service's wire formats: request bodies in, response bodies out; pure functions.

Two APIs over one engine:
- the deployment plan's `POST /api/synthesize`: JSON (or multipart, to upload the prompt)
  `text`, `speaker_id`, `prompt_wav`, `prompt_text`, `stream`; answers
  `{"audio": <base64 wav>, "sample_rate", "duration", "success": true}`, or `audio/wav` bytes
  as they are produced when streamed;
- OpenAI's `POST /v1/audio/speech`: `model`, `input`, `voice`, `response_format`, `speed`,
  `instructions`, `stream_format` (`audio`: the encoded bytes as produced; `sse`:
  `speech.audio.delta` events, then `speech.audio.done`).
Every malformed field is a BadRequest naming it.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from web_demo.server.errors import BadRequest

OPENAI_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
# OpenAI's voice names: engines without a speaker of that name answer with their default voice
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage",
                 "shimmer", "verse", "marin", "cedar")
STREAM_FORMATS = ("audio", "sse")
MIN_SPEED, MAX_SPEED = 0.25, 4.0  # OpenAI's range
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class PlanSynthesis:
    """A parsed /api/synthesize body. At most one prompt source: a server-side path under
    --prompt-dir (`prompt_wav`), base64 file bytes (`prompt_wav_base64`) or an upload."""
    text: str
    speaker_id: str | None
    prompt_wav: str | None
    prompt_wav_bytes: bytes | None
    prompt_text: str | None
    instructions: str | None
    seed: int | None
    stream: bool


@dataclass(frozen=True)
class OpenAISpeech:
    model: str
    input: str
    voice: str
    response_format: str
    speed: float
    instructions: str | None
    stream_format: str
    seed: int | None  # our extension (the SDK's extra_body): repeatable sampling


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {str(exc)[:120]}", param=None) from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", param=None)
    return body


def parse_plan(body: Mapping[str, Any], *, max_text_chars: int, max_prompt_bytes: int) -> PlanSynthesis:
    prompt_b64 = _opt_str(body, "prompt_wav_base64", max_prompt_bytes * 4 // 3 + 8)
    prompt_bytes = _b64(prompt_b64, "prompt_wav_base64") if prompt_b64 is not None else None
    prompt_wav = _opt_str(body, "prompt_wav", 4096)
    if prompt_wav is not None and prompt_bytes is not None:
        raise BadRequest("give prompt_wav or prompt_wav_base64, not both", param="prompt_wav")
    return PlanSynthesis(
        text=_text(body, "text", max_text_chars), speaker_id=_opt_str(body, "speaker_id", 200),
        prompt_wav=prompt_wav, prompt_wav_bytes=prompt_bytes,
        prompt_text=_opt_str(body, "prompt_text", max_text_chars),
        instructions=_opt_str(body, "instructions", max_text_chars),
        seed=_seed(body.get("seed")), stream=_bool(body, "stream"))


def parse_openai(body: Mapping[str, Any], *, max_text_chars: int) -> OpenAISpeech:
    model = _opt_str(body, "model", 200)
    if not model:
        raise BadRequest("model is required", param="model")
    fmt = _choice(body, "response_format", OPENAI_FORMATS, "mp3")
    return OpenAISpeech(model=model, input=_text(body, "input", max_text_chars), voice=_voice(body),
                        response_format=fmt, speed=_speed(body.get("speed", 1.0)),
                        instructions=_opt_str(body, "instructions", max_text_chars),
                        stream_format=_choice(body, "stream_format", STREAM_FORMATS, "audio"),
                        seed=_seed(body.get("seed")))


def plan_body(wav: bytes, *, sample_rate: int, duration_s: float) -> dict[str, Any]:
    return {"audio": base64.b64encode(wav).decode("ascii"), "sample_rate": sample_rate,
            "duration": round(duration_s, 3), "success": True}


def sse_delta(encoded: bytes) -> bytes:
    return _sse({"type": "speech.audio.delta", "audio": base64.b64encode(encoded).decode("ascii")})


def sse_done(*, input_chars: int, output_seconds: float) -> bytes:
    # OpenAI reports tokens; the nearest honest counts here are characters in, 25 Hz frames out
    out = round(output_seconds * 25)
    return _sse({"type": "speech.audio.done",
                 "usage": {"input_tokens": input_chars, "output_tokens": out,
                           "total_tokens": input_chars + out}})


def sse_error(message: str, *, kind: str) -> bytes:
    return _sse({"type": "error", "error": {"message": message, "type": kind}})


def _sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


# -- fields ---------------------------------------------------------------------------------------
def _opt_str(body: Mapping[str, Any], name: str, max_len: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string", param=name)
    if len(value) > max_len:
        raise BadRequest(f"{name} is {len(value)} characters; at most {max_len}", param=name)
    return value or None


def _text(body: Mapping[str, Any], name: str, max_chars: int) -> str:
    text = _opt_str(body, name, max_chars)
    if text is None or not text.strip():
        raise BadRequest(f"{name} is required and must not be empty", param=name)
    return text


def _voice(body: Mapping[str, Any]) -> str:
    value = body.get("voice")
    if isinstance(value, dict):  # the newer SDKs' {"id": "..."} form of a custom voice
        value = value.get("id")
    if not isinstance(value, str) or not value.strip():
        raise BadRequest("voice is required: a voice name or speaker id", param="voice")
    if len(value) > 200:
        raise BadRequest("voice is longer than 200 characters", param="voice")
    return value


def _choice(body: Mapping[str, Any], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = body.get(name, default)
    if value is None:
        return default
    if value not in allowed:
        raise BadRequest(f"{name} must be one of {', '.join(allowed)}, got {str(value)[:40]!r}", param=name)
    return str(value)


def _speed(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest("speed must be a number", param="speed")
    if not MIN_SPEED <= value <= MAX_SPEED:
        raise BadRequest(f"speed must be within [{MIN_SPEED}, {MAX_SPEED}], got {value}", param="speed")
    return float(value)


def _bool(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if isinstance(value, str) and value.lower() in ("true", "false"):  # multipart fields are text
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false", param=name)
    return value


def _seed(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise BadRequest(f"seed must be an integer in [0, {MAX_SEED}]", param="seed")
    return value


def _b64(value: str, name: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{name} is not valid base64", param=name) from None
