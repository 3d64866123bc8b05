"""ChunkedAsrEngine: long audio cut at silences that the real silero-vad finds, then stitched."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

import numpy as np
import pytest

from tests.helpers import FIXTURES
from utils.audio import read_wav
from web_demo.server.engines.base import Segment, Transcription, TranscriptionRequest, Word
from web_demo.server.engines.long_audio import ChunkedAsrEngine, SileroVad
from web_demo.server.errors import BadRequest

RATE = 16_000
NAMES = ("fox", "hello", "weather")


@dataclass
class Built:
    pcm: np.ndarray  # float32 [T]
    speech: list[tuple[int, int]]  # [start, end) samples of each fixture placed in it


def build(seconds: float, gap_s: float = 1.0) -> Built:
    """Speech fixtures one after another with `gap_s` of near-silence between them, over a faint
    noise floor (which also makes every chunk findable in the whole by its samples)."""
    clips = [read_wav(FIXTURES / "speech" / f"{name}.wav")[0] for name in NAMES]
    rng = np.random.default_rng(0)
    pcm = (rng.standard_normal(int(seconds * RATE)) * 1e-4).astype(np.float32)
    speech, at, i = [], int(gap_s * RATE), 0
    while at + len(clips[i % 3]) <= len(pcm):
        clip = clips[i % 3]
        pcm[at:at + len(clip)] += clip
        speech.append((at, at + len(clip)))
        at += len(clip) + int(gap_s * RATE)
        i += 1
    return Built(pcm, speech)


@dataclass
class RecordingAsr:
    """Finds each chunk it gets inside the whole audio; answers one timed segment per chunk."""
    whole: np.ndarray
    language: str = "en"
    delay_s: float = 0.0
    fail_at: int | None = None  # a chunk starting at this sample fails
    name: str = "recording"
    chunks: list[tuple[int, int]] = field(default_factory=list)  # (offset, samples)
    answered: int = 0
    in_flight: int = 0
    peak: int = 0

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def health(self) -> dict[str, str]:
        return {"status": "healthy"}

    async def transcribe(self, request: TranscriptionRequest) -> Transcription:
        pcm = request.pcm_16k
        offset = self._locate(pcm)
        self.chunks.append((offset, len(pcm)))
        if offset == self.fail_at:
            raise BadRequest("this chunk fails")
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        self.answered += 1
        text = f"part{offset}"
        words = (Word(0.2, 0.4, text),)
        return Transcription(text=text, language=self.language, duration_s=len(pcm) / RATE,
                             segments=(Segment(0.2, len(pcm) / RATE - 0.1, text, words),))

    def _locate(self, chunk: np.ndarray) -> int:
        for at in np.flatnonzero(self.whole == chunk[0]):
            if np.array_equal(self.whole[at:at + len(chunk)], chunk):
                return int(at)
        raise AssertionError("a chunk that is not part of the audio")


def in_gap(sample: int, built: Built) -> bool:
    return all(not start < sample < end for start, end in built.speech)


async def test_short_audio_goes_to_the_inner_engine_as_it_is() -> None:
    built = build(10.0)
    inner = RecordingAsr(built.pcm)
    request = TranscriptionRequest(built.pcm, language="en")
    heard = await ChunkedAsrEngine(inner).transcribe(request)
    assert inner.chunks == [(0, len(built.pcm))] and heard.text == "part0"


async def test_long_audio_is_cut_in_silences_and_stitched() -> None:
    built = build(75.0)
    inner = RecordingAsr(built.pcm)
    engine = ChunkedAsrEngine(inner, max_chunk_s=30.0)
    heard = await engine.transcribe(TranscriptionRequest(built.pcm, word_timestamps=True))

    chunks = sorted(inner.chunks)
    assert len(chunks) == 3
    assert all(n <= 30 * RATE for _, n in chunks)
    bounds = [offset for offset, _ in chunks[1:]]
    assert all(in_gap(cut, built) for cut in bounds), (bounds, built.speech)
    # contiguous: nothing lost, nothing twice
    assert chunks[0][0] == 0 and sum(n for _, n in chunks) == len(built.pcm)
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(chunks))

    assert heard.text == " ".join(f"part{offset}" for offset, _ in chunks)
    assert heard.language == "en" and heard.duration_s == len(built.pcm) / RATE
    for segment, (offset, n) in zip(heard.segments, chunks, strict=True):
        assert segment.start_s == pytest.approx(offset / RATE + 0.2)
        assert segment.end_s == pytest.approx((offset + n) / RATE - 0.1)
        (word,) = segment.words
        assert (word.start_s, word.end_s) == (pytest.approx(offset / RATE + 0.2),
                                              pytest.approx(offset / RATE + 0.4))


async def test_a_short_limit_still_cuts_between_the_fixtures() -> None:
    built = build(40.0)
    inner = RecordingAsr(built.pcm)
    await ChunkedAsrEngine(inner, max_chunk_s=5.0).transcribe(TranscriptionRequest(built.pcm))
    chunks = sorted(inner.chunks)
    assert len(chunks) >= 8 and all(n <= 5 * RATE for _, n in chunks)
    assert all(in_gap(offset, built) for offset, _ in chunks[1:])


async def test_cjk_text_is_joined_without_spaces() -> None:
    built = build(65.0)
    inner = RecordingAsr(built.pcm, language="zh")
    heard = await ChunkedAsrEngine(inner).transcribe(TranscriptionRequest(built.pcm))
    assert len(inner.chunks) == 3 and " " not in heard.text and heard.language == "zh"


async def test_silence_only_gives_empty_text_without_asking_the_engine() -> None:
    built = build(45.0, gap_s=60.0)  # no room for speech
    inner = RecordingAsr(built.pcm)
    heard = await ChunkedAsrEngine(inner).transcribe(TranscriptionRequest(built.pcm, language="en"))
    assert not built.speech and inner.chunks == []
    assert heard == Transcription(text="", language="en", duration_s=45.0)


class AllSpeech:
    """A VAD that hears speech everywhere: one stretch as long as the audio."""

    def speech_probs(self, pcm_16k: np.ndarray) -> np.ndarray:
        return np.ones(-(-len(pcm_16k) // 512), dtype=np.float32)


async def test_a_speech_stretch_longer_than_the_limit_is_cut_hard() -> None:
    built = build(70.0)
    inner = RecordingAsr(built.pcm)
    await ChunkedAsrEngine(inner, vad=AllSpeech()).transcribe(TranscriptionRequest(built.pcm))
    frames_30s = 30 * RATE // 512 * 512  # cuts fall on VAD frames
    assert sorted(inner.chunks) == [(0, frames_30s), (frames_30s, frames_30s),
                                    (2 * frames_30s, len(built.pcm) - 2 * frames_30s)]


async def test_real_vad_cuts_speech_hard_when_the_limit_is_shorter_than_a_sentence() -> None:
    fox = read_wav(FIXTURES / "speech" / "fox.wav")[0]
    probs = SileroVad().speech_probs(fox)
    assert (probs >= 0.5).sum() * 512 > 2.2 * RATE  # the sentence is one long stretch of speech
    built = Built(np.concatenate([fox] * 2), [])
    inner = RecordingAsr(built.pcm)
    await ChunkedAsrEngine(inner, max_chunk_s=1.0).transcribe(TranscriptionRequest(built.pcm))
    assert len(inner.chunks) >= 5 and all(n <= RATE for _, n in inner.chunks)


async def test_chunks_run_concurrently_within_the_bound() -> None:
    built = build(100.0)
    inner = RecordingAsr(built.pcm, delay_s=0.2)
    engine = ChunkedAsrEngine(inner, max_chunk_s=10.0, max_concurrency=3)
    await engine.transcribe(TranscriptionRequest(built.pcm))
    assert len(inner.chunks) >= 10 and inner.peak == 3


async def test_one_failed_chunk_fails_the_request() -> None:
    built = build(75.0)
    planned = RecordingAsr(built.pcm)
    await ChunkedAsrEngine(planned).transcribe(TranscriptionRequest(built.pcm))
    second = sorted(planned.chunks)[1][0]
    inner = RecordingAsr(built.pcm, delay_s=0.5, fail_at=second)
    with pytest.raises(BadRequest, match="this chunk fails"):  # its own kind: a 400 stays a 400
        await ChunkedAsrEngine(inner).transcribe(TranscriptionRequest(built.pcm))
    assert len(inner.chunks) == 3 and inner.answered == 0 and inner.in_flight == 0  # others stopped
