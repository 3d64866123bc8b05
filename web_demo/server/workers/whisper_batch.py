"""Several TranscriptionRequests decoded in one CTranslate2 batch (FasterWhisperHandler's batching).

faster-whisper's `WhisperModel.transcribe` decodes one audio at a time, and its
`BatchedInferencePipeline` batches the windows of one long audio under one shared prompt and
without the temperature fallback. Here different requests share the encoder pass and the
greedy/beam decode instead; each request's window, prompt and language stay its own, and
the result equals what `transcribe` returns for it alone (the batched encoder output and
tokens are bit-identical to the unbatched ones on CPU int8). Whatever this path does not
reproduce exactly goes back to the caller as None, to be decoded alone:

- audio longer than one 30 s window, word timestamps, or a sampling temperature (`fits`);
- a window that asks for the hotter fallback (too repetitive or too unsure) or that leaves
  audio for a second window.

CTranslate2 requires the start-of-transcript token at the same position in every prompt of a
batch, so requests are grouped by the length of their prompt prefix (`group_key`).
Written against faster-whisper 1.2.1 (`generate_segments`, `generate_with_fallback`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from web_demo.server.engines.base import TranscriptionRequest

# WhisperModel.transcribe's defaults, which the handler leaves as they are.
COMPRESSION_RATIO_THRESHOLD = 2.4
LOG_PROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
MAX_INITIAL_TIMESTAMP_S = 1.0


@dataclass
class _Window:
    """One request whose audio fits one encoder window."""
    request: TranscriptionRequest
    features: np.ndarray = field(repr=False)  # float32 [n_mels, 3000], zero padded
    frames: int  # feature frames with audio in them (100 per second)
    previous: list[int]  # prompt text tokens (the initial prompt), before any language is known


@dataclass(frozen=True)
class Decoded:
    """What `transcribe` would have returned: its segments and its language."""
    segments: list[Any]  # faster_whisper.transcribe.Segment
    language: str


class WhisperBatcher:
    """Batched first-window decoding over one WhisperModel; owned by FasterWhisperHandler."""

    def __init__(self, model: Any, *, beam_size: int) -> None:
        from faster_whisper.transcribe import get_suppressed_tokens

        self._model = model  # faster_whisper.WhisperModel
        self._beam_size = beam_size
        self._tokenizers: dict[str, Any] = {}
        english = self._tokenizer("en")
        self._sot = english.sot
        self._suppress = get_suppressed_tokens(english, [-1])  # the same for every language

    def fits(self, request: TranscriptionRequest) -> bool:
        frames = len(request.pcm_16k) // self._model.feature_extractor.hop_length
        return (0 < frames <= self._model.feature_extractor.nb_max_frames
                and not request.temperature and not request.word_timestamps)

    def group_key(self, request: TranscriptionRequest) -> int:
        """Requests with the same key can share a batch: where their prompt puts the sot token."""
        prompt = self._model.get_prompt(self._tokenizer("en"), self._previous(request),
                                        hotwords=_hotwords(request))
        return int(prompt.index(self._sot))

    def decode(self, requests: Sequence[TranscriptionRequest]) -> list[Decoded | None]:
        """One entry per request (all of one group_key, all fitting): its result, or None."""
        from faster_whisper.audio import pad_or_trim

        windows = []
        for request in requests:
            features = self._model.feature_extractor(np.asarray(request.pcm_16k, dtype=np.float32))
            frames = features.shape[-1] - 1  # the extractor pads one hop: not audio
            windows.append(_Window(request, pad_or_trim(features[:, :frames]), frames,
                                   self._previous(request)))
        encoded = self._model.encode(np.stack([w.features for w in windows]))  # [B, 1500, d]
        languages = self._languages(windows, encoded)
        tokenizers = [self._tokenizer(language) for language in languages]
        prompts = [self._model.get_prompt(tok, w.previous, hotwords=_hotwords(w.request))
                   for w, tok in zip(windows, tokenizers, strict=True)]
        results = self._model.model.generate(
            encoded, prompts, beam_size=self._beam_size, patience=1, length_penalty=1,
            repetition_penalty=1, no_repeat_ngram_size=0, max_length=self._model.max_length,
            return_scores=True, return_no_speech_prob=True, suppress_blank=True,
            suppress_tokens=self._suppress,
            max_initial_timestamp_index=round(MAX_INITIAL_TIMESTAMP_S / self._model.time_precision))
        return [self._finish(w, result, tok, language)
                for w, result, tok, language in zip(windows, results, tokenizers, languages,
                                                     strict=True)]

    def _tokenizer(self, language: str) -> Any:
        if language not in self._tokenizers:
            from faster_whisper.tokenizer import Tokenizer

            self._tokenizers[language] = Tokenizer(
                self._model.hf_tokenizer, self._model.model.is_multilingual, task="transcribe",
                language=language)
        return self._tokenizers[language]

    def _previous(self, request: TranscriptionRequest) -> list[int]:
        if request.prompt is None:
            return []
        tokens: list[int] = self._tokenizer("en").encode(" " + request.prompt.strip())
        return tokens

    def _languages(self, windows: list[_Window], encoded: Any) -> list[str]:
        """The asked language, else what the model detects in the same window ('en' if English-only)."""
        if not self._model.model.is_multilingual:
            return ["en"] * len(windows)
        if all(w.request.language is not None for w in windows):
            return [str(w.request.language) for w in windows]
        detected = self._model.model.detect_language(encoded)  # per item: [(token, p)] best first
        return [w.request.language or str(ranked[0][0])[2:-2]  # "<|en|>" -> "en"
                for w, ranked in zip(windows, detected, strict=True)]

    def _finish(self, window: _Window, result: Any, tokenizer: Any, language: str) -> Decoded | None:
        """The window's segments as generate_segments makes them; None where it would go on."""
        from faster_whisper.transcribe import Segment, get_compression_ratio

        tokens: list[int] = result.sequences_ids[0]
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)  # length_penalty 1
        compression_ratio = get_compression_ratio(tokenizer.decode(tokens).strip())
        silence = result.no_speech_prob > NO_SPEECH_THRESHOLD
        unsure = avg_logprob < LOG_PROB_THRESHOLD
        if (compression_ratio > COMPRESSION_RATIO_THRESHOLD or unsure) and not (silence and unsure):
            return None  # the hotter retries: generate_with_fallback, alone
        if silence and avg_logprob <= LOG_PROB_THRESHOLD:
            return Decoded([], language)  # transcribe skips a window it judges silent
        duration_s = window.frames * self._model.feature_extractor.time_per_frame
        parts, seek, _ = self._model._split_segments_by_timestamps(
            tokenizer=tokenizer, tokens=tokens, time_offset=0.0, segment_size=window.frames,
            segment_duration=duration_s, seek=0)
        if seek < window.frames:
            return None  # the decode stopped early: transcribe would decode a second window
        segments: list[Any] = []
        for part in parts:
            text = tokenizer.decode(part["tokens"])
            if part["start"] == part["end"] or not text.strip():
                continue
            segments.append(Segment(
                id=len(segments) + 1, seek=0, start=part["start"], end=part["end"], text=text,
                tokens=part["tokens"], avg_logprob=avg_logprob, compression_ratio=compression_ratio,
                no_speech_prob=result.no_speech_prob, words=None, temperature=0.0))
        return Decoded(segments, language)


def _hotwords(request: TranscriptionRequest) -> str | None:
    return " ".join(request.hotwords) or None
