"""Long audio for engines that hear 30 s at a time: cut at silences, transcribe, stitch.

Whisper decodes 30 s windows, and one long request decoded window after window in a worker
holds that worker for all of them. ChunkedAsrEngine cuts audio longer than `max_chunk_s` at
silences that silero-vad (vad.py) finds, sends the chunks to the inner engine concurrently
(a batching worker decodes them together), and stitches the answers back into one Transcription with
times from the start of the whole audio.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from utils.audio import MODEL_SAMPLE_RATE
from web_demo.server.engines.base import AsrEngine, Segment, Transcription, TranscriptionRequest
from web_demo.server.vad import VAD_FRAME, SileroVad

# Written without spaces between words; Korean is written with them.
UNSPACED_LANGUAGES = frozenset({"zh", "yue", "ja", "th", "lo", "my", "km", "bo"})


class Vad(Protocol):
    def speech_probs(self, pcm_16k: np.ndarray) -> np.ndarray:
        """float32 [T] -> float32 [ceil(T / VAD_FRAME)]: speech probability of each frame."""
        ...


@dataclass(frozen=True)
class ChunkingConfig:
    max_chunk_s: float = 30.0  # Whisper's window
    threshold: float = 0.5  # a frame at or above is speech
    min_silence_s: float = 0.3  # a pause at least this long is preferred as a cut

    def __post_init__(self) -> None:
        if self.max_chunk_s * MODEL_SAMPLE_RATE < VAD_FRAME:
            raise ValueError(f"max_chunk_s must be at least {VAD_FRAME / MODEL_SAMPLE_RATE} s")
        if not 0 < self.threshold < 1:
            raise ValueError(f"the VAD threshold must be between 0 and 1, got {self.threshold}")

    @property
    def silent_below(self) -> float:
        """A frame below this is silence: silero's own hysteresis (threshold - 0.15), so that a
        cut lands where the model is sure, not between two syllables."""
        return max(self.threshold - 0.15, self.threshold / 2)


def plan_chunks(probs: np.ndarray, n_samples: int, cfg: ChunkingConfig) -> list[tuple[int, int]]:
    """[start, end) sample ranges that cover the audio, each at most max_chunk_s long, cut in
    silences where there are any; ranges without a speech frame are left out."""
    max_frames = int(cfg.max_chunk_s * MODEL_SAMPLE_RATE) // VAD_FRAME
    runs = _silent_runs(probs < cfg.silent_below)
    cuts = [0]
    while n_samples - cuts[-1] * VAD_FRAME > max_frames * VAD_FRAME:
        cuts.append(_cut(runs, cuts[-1], cuts[-1] + max_frames,
                         round(cfg.min_silence_s * MODEL_SAMPLE_RATE / VAD_FRAME)))
    bounds = [c * VAD_FRAME for c in cuts] + [n_samples]
    speech = probs >= cfg.threshold
    return [(start, end) for start, end in itertools.pairwise(bounds)
            if speech[start // VAD_FRAME:-(-end // VAD_FRAME)].any()]


def _silent_runs(silent: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) frame ranges of consecutive silent frames."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], silent.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def _cut(runs: list[tuple[int, int]], start: int, limit: int, min_silence: int) -> int:
    """A frame in (start, limit] to cut at: the middle of the last long enough pause, else of the
    longest pause, else `limit` (speech that long is cut hard)."""
    inside = [(max(a, start + 1), min(b, limit)) for a, b in runs if b > start + 1 and a < limit]
    inside = [(a, b) for a, b in inside if b > a]
    if not inside:
        return limit
    long_enough = [(a, b) for a, b in inside if b - a >= min_silence]
    a, b = long_enough[-1] if long_enough else max(inside, key=lambda r: r[1] - r[0])
    return (a + b) // 2


class ChunkedAsrEngine:
    """Wraps an AsrEngine so that it takes long audio; shares the inner engine's lifetime."""

    def __init__(self, inner: AsrEngine, *, max_chunk_s: float = 30.0, max_concurrency: int = 8,
                 vad_threshold: float = 0.5, min_silence_s: float = 0.3,
                 vad: Vad | None = None) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.name = inner.name
        self.inner = inner
        self._cfg = ChunkingConfig(max_chunk_s=max_chunk_s, threshold=vad_threshold,
                                   min_silence_s=min_silence_s)
        self._max_concurrency = max_concurrency  # per request: the worker's queue bounds the rest
        self._vad = vad or SileroVad()

    async def start(self) -> None:
        await self.inner.start()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def health(self) -> dict[str, Any]:
        return self.inner.health()

    async def transcribe(self, request: TranscriptionRequest) -> Transcription:
        pcm_16k = request.pcm_16k
        if pcm_16k.ndim != 1 or len(pcm_16k) <= self._cfg.max_chunk_s * MODEL_SAMPLE_RATE:
            return await self.inner.transcribe(request)
        pcm_16k = np.asarray(pcm_16k, dtype=np.float32)
        probs = await asyncio.to_thread(self._vad.speech_probs, pcm_16k)  # ~0.3 s per 30 s
        chunks = plan_chunks(probs, len(pcm_16k), self._cfg)
        limit = asyncio.Semaphore(self._max_concurrency)

        async def one(start: int, end: int) -> Transcription:
            async with limit:
                return await self.inner.transcribe(dataclasses.replace(request, pcm_16k=pcm_16k[start:end]))

        tasks = [asyncio.create_task(one(start, end), name=f"asr-chunk-{start}") for start, end in chunks]
        try:
            parts = await asyncio.gather(*tasks)
        except BaseException:
            # The first failure is the request's (its own kind, e.g. a 400); the rest stop.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        offsets = [start / MODEL_SAMPLE_RATE for start, _ in chunks]
        return stitch(parts, offsets, duration_s=len(pcm_16k) / MODEL_SAMPLE_RATE,
                      language=request.language)


def stitch(parts: Sequence[Transcription], offsets_s: Sequence[float], *, duration_s: float,
           language: str | None) -> Transcription:
    """Chunk transcriptions (in order) -> one; times shifted by each chunk's offset.

    The language is the asked one, else the one most chunks with text were heard in."""
    heard = Counter(p.language for p in parts if p.text and p.language is not None)
    language = language or (heard.most_common(1)[0][0] if heard else None)
    segments = tuple(_shifted(s, offset) for p, offset in zip(parts, offsets_s, strict=True)
                     for s in p.segments)
    return Transcription(text=_join([p.text for p in parts if p.text], language),
                         language=language, duration_s=duration_s, segments=segments)


def _shifted(segment: Segment, offset_s: float) -> Segment:
    words = tuple(dataclasses.replace(w, start_s=w.start_s + offset_s, end_s=w.end_s + offset_s)
                  for w in segment.words)
    return dataclasses.replace(segment, start_s=segment.start_s + offset_s,
                               end_s=segment.end_s + offset_s, words=words)


def _join(texts: list[str], language: str | None) -> str:
    joined = ""
    for text in texts:
        unspaced = (language in UNSPACED_LANGUAGES if language is not None
                    else _unspaced_script(joined[-1:]) or _unspaced_script(text[:1]))
        joined = text if not joined else joined + ("" if unspaced else " ") + text
    return joined


def _unspaced_script(char: str) -> bool:
    """CJK ideographs, kana, CJK and full-width punctuation, Thai and Lao: no spaces around."""
    code = ord(char) if char else 0
    return (0x3000 <= code <= 0x30FF or 0x3400 <= code <= 0x9FFF or 0xF900 <= code <= 0xFAFF
            or 0xFF00 <= code <= 0xFFEF or 0x0E00 <= code <= 0x0EFF)

