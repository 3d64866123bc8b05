"""Per-session sampling settings from an /api/chat query string (upstream's browser client).

Upstream Fun-Audio-Chat's client (derived from moshi's) always sends `text_temperature`,
`text_topk`, `audio_temperature`, `audio_topk`, `text_seed`, `audio_seed`,
`repetition_penalty` and `repetition_penalty_context`, plus moshi's `pad_mult`, which this
model has no use for and which is ignored. A value that is not a number is refused (HTTP 400,
before the WebSocket opens); a number out of range is clamped into it, because a slider set
a little too far should still give a conversation. The ranges are in LIMITS.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from web_demo.server.engines.base import SamplingOptions
from web_demo.server.errors import BadRequest


@dataclass(frozen=True)
class Limit:
    field: str  # the SamplingOptions field
    integer: bool
    low: float
    high: float


MAX_SEED = 2**63 - 1
LIMITS: dict[str, Limit] = {  # query parameter -> where it goes and its range
    "text_temperature": Limit("text_temperature", False, 0.0, 2.0),  # 0: greedy
    "audio_temperature": Limit("speech_temperature", False, 0.0, 2.0),
    "text_topk": Limit("text_top_k", True, 0, 1000),  # 0: no top-k limit
    "audio_topk": Limit("speech_top_k", True, 0, 1000),
    "text_seed": Limit("text_seed", True, -1, MAX_SEED),  # negative: a random seed
    "audio_seed": Limit("speech_seed", True, -1, MAX_SEED),
    "repetition_penalty": Limit("repetition_penalty", False, 1.0, 2.0),  # 1: no penalty
    "repetition_penalty_context": Limit("repetition_window", True, 1, 4096),  # tokens
}
MAX_VALUE_CHARS = 32


def sampling_from_query(query: Mapping[str, str]) -> SamplingOptions | None:
    """The SamplingOptions a query string asks for; None when it names none of LIMITS."""
    values: dict[str, float | int | None] = {}
    for name, limit in LIMITS.items():
        raw = query.get(name)
        if raw is not None and raw.strip():
            values[limit.field] = _clamped(name, raw, limit)
    return SamplingOptions(**values) if values else None  # type: ignore[arg-type]


def _clamped(name: str, raw: str, limit: Limit) -> float | int | None:
    if len(raw) > MAX_VALUE_CHARS:
        raise BadRequest(f"query parameter {name} is too long", param=name)
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name} must be a number, got {raw!r}", param=name) from None
    if math.isnan(value):
        raise BadRequest(f"query parameter {name} must be a number, got {raw!r}", param=name)
    if limit.integer:
        if not math.isfinite(value) or value != int(value):
            raise BadRequest(f"query parameter {name} must be an integer, got {raw!r}", param=name)
        if limit.field.endswith("_seed") and value < 0:
            return None  # moshi's -1: a random seed
        return int(min(max(value, limit.low), limit.high))
    return min(max(value, limit.low), limit.high)
