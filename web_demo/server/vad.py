"""silero-vad: speech probabilities of 32 ms frames, whole sequences or streamed, and turns.

One ONNX session per process (`SileroVad`, shared and thread-safe) serves two callers:
- long_audio.py asks for the probabilities of a whole recording at once (`speech_probs`);
- a hands-free /api/chat session streams its microphone through `VadTurnTracker`:
  PCM 16 kHz (as the wire delivers it) -> `SileroStream` (its own LSTM state h, c and the
  64-sample context, carried across calls) -> probabilities -> `SpeechSegmenter` (pure) ->
  speech_started / speech_stopped events, each speech_started carrying a short pre-roll.

Streaming runs the same sequence model on the frames each call completes, with the state the
previous call left, so it gives the probabilities one call over the whole audio gives.
Memory per stream is bounded: the state, < 1 frame of pending samples and the pre-roll.
"""

from __future__ import annotations

import importlib.util
import math
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from utils.audio import MODEL_SAMPLE_RATE

VAD_FRAME = 512  # samples at 16 kHz (32 ms): silero-vad's frame
VAD_CONTEXT = 64  # samples of the previous frame that the model sees before each frame
_VAD_BLOCK = 512  # frames per onnxruntime call (16 s): bounds the memory of one call
_STATE_SHAPE = (1, 1, 128)  # LSTM h and c
_FEED_SAMPLES = 640  # a tracker feeds 40 ms at a time, so no piece holds two events
_HYSTERESIS = 0.15  # silero's own: silence is below threshold - 0.15

# Limits of the per-session settings (query, metadata frame and server flags alike).
THRESHOLD_RANGE = (0.1, 0.95)
SILENCE_MS_RANGE = (100, 5000)
MIN_SPEECH_MS = 250  # speech this long before a turn starts: a cough or a click is not a turn
PREROLL_MS = 300  # the turn starts this long before the detected onset
_MAX_VALUE_CHARS = 32


class SileroVad:
    """silero-vad's sequence ONNX model on onnxruntime; loaded on first use, then shared.

    The package's own import pulls in torch (~1 s, ~200 MB) only to run the same model, so
    its ONNX file is found without importing it. Who creates one owns it (the ASR engine, the
    chat route); every stream of that owner runs on it, each with its own state.
    """

    def __init__(self) -> None:
        self._session: Any = None  # onnxruntime.InferenceSession; thread-safe to run
        self._lock = threading.Lock()

    def speech_probs(self, pcm_16k: np.ndarray) -> np.ndarray:
        """float32 [T] -> float32 [ceil(T / VAD_FRAME)]: speech probability of each frame (the
        last one padded with zeros)."""
        frames = -(-len(pcm_16k) // VAD_FRAME)
        padded = np.zeros(frames * VAD_FRAME, dtype=np.float32)
        padded[:len(pcm_16k)] = pcm_16k
        probs, _ = self.run(padded.reshape(frames, VAD_FRAME), VadState.initial())  # [F, 512]
        return probs

    def run(self, frames: np.ndarray, state: VadState) -> tuple[np.ndarray, VadState]:
        """float32 [F, 512] frames that follow `state` -> (float32 [F] probabilities, the state
        after them)."""
        assert frames.ndim == 2 and frames.shape[1] == VAD_FRAME, frames.shape
        if len(frames) == 0:
            return np.zeros(0, dtype=np.float32), state
        session = self._loaded()
        context = np.concatenate([state.context[None], frames[:-1, -VAD_CONTEXT:]])  # [F, 64]
        inputs = np.concatenate([context, frames], axis=1).astype(np.float32, copy=False)  # [F, 576]
        h, c, probs = state.h, state.c, []
        for start in range(0, len(frames), _VAD_BLOCK):
            block_probs, h, c = session.run(["speech_probs", "hn", "cn"],
                                            {"input": inputs[start:start + _VAD_BLOCK], "h": h, "c": c})
            probs.append(block_probs.reshape(-1))
        return np.concatenate(probs), VadState(h, c, frames[-1, -VAD_CONTEXT:].copy())

    def _loaded(self) -> Any:
        with self._lock:
            if self._session is None:
                import onnxruntime  # type: ignore[import-untyped]  # ships no types

                spec = importlib.util.find_spec("silero_vad")  # locates; does not import
                if spec is None or not spec.submodule_search_locations:
                    raise RuntimeError("the silero-vad package is not installed")
                path = Path(spec.submodule_search_locations[0]) / "data" / "silero_vad_16k_sequence.onnx"
                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = options.inter_op_num_threads = 1  # RTF ~0.01 anyway
                self._session = onnxruntime.InferenceSession(
                    str(path), sess_options=options, providers=["CPUExecutionProvider"])
            return self._session


@dataclass(frozen=True)
class VadState:
    """What the model carries from one frame to the next."""
    h: np.ndarray  # float32 [1, 1, 128]
    c: np.ndarray  # float32 [1, 1, 128]
    context: np.ndarray  # float32 [64]: the end of the previous frame

    @classmethod
    def initial(cls) -> VadState:
        return cls(np.zeros(_STATE_SHAPE, np.float32), np.zeros(_STATE_SHAPE, np.float32),
                   np.zeros(VAD_CONTEXT, np.float32))


class SileroStream:
    """One audio stream through a shared SileroVad: PCM 16 kHz in any chunk sizes ->
    the probability of each frame as soon as the frame is complete."""

    def __init__(self, model: SileroVad) -> None:
        self._model = model
        self._state = VadState.initial()
        self._pending_16k = np.zeros(0, np.float32)  # [< 512]: not yet a whole frame
        self.frames = 0  # frames scored so far

    def push(self, pcm_16k: np.ndarray) -> np.ndarray:
        """float32 [T] -> float32 [F]: the frames this audio completed."""
        audio = np.concatenate([self._pending_16k, np.asarray(pcm_16k, dtype=np.float32)])
        whole = len(audio) // VAD_FRAME * VAD_FRAME
        self._pending_16k = audio[whole:]
        probs, self._state = self._model.run(audio[:whole].reshape(-1, VAD_FRAME), self._state)
        self.frames += len(probs)
        return probs


@dataclass(frozen=True)
class VadSettings:
    """A session's turn detection; out-of-range values raise ValueError (see the limits above)."""
    threshold: float = 0.5  # a frame at or above is speech
    silence_ms: int = 500  # this much silence after speech ends the turn
    min_speech_ms: int = MIN_SPEECH_MS
    preroll_ms: int = PREROLL_MS

    def __post_init__(self) -> None:
        low, high = THRESHOLD_RANGE
        if not (isinstance(self.threshold, (int, float)) and low <= self.threshold <= high):
            raise ValueError(f"vad_threshold must be a number from {low} to {high}, got {self.threshold!r}")
        low_ms, high_ms = SILENCE_MS_RANGE
        if not (isinstance(self.silence_ms, int) and low_ms <= self.silence_ms <= high_ms):
            raise ValueError(f"vad_silence_ms must be a whole number from {low_ms} to {high_ms}, "
                             f"got {self.silence_ms!r}")
        if self.min_speech_ms < 2 * VAD_FRAME * 1000 / MODEL_SAMPLE_RATE or self.preroll_ms < 0:
            raise ValueError("min_speech_ms must cover two frames and preroll_ms be >= 0")

    @property
    def silent_below(self) -> float:
        """silero's hysteresis: between this and the threshold a frame keeps what it was."""
        return max(self.threshold - _HYSTERESIS, self.threshold / 2)

    def updated(self, values: Mapping[str, Any]) -> VadSettings:
        """These settings with `vad_threshold` / `vad_silence_ms` from a query or a metadata
        frame: numbers or strings of numbers, clamped into the limits (a slider set a little
        too far still gives a conversation); raises ValueError on what is not a number."""
        threshold, silence_ms = self.threshold, self.silence_ms
        if "vad_threshold" in values:
            threshold = _clamp(_number(values["vad_threshold"], "vad_threshold"), *THRESHOLD_RANGE)
        if "vad_silence_ms" in values:
            silence_ms = round(_clamp(_number(values["vad_silence_ms"], "vad_silence_ms"),
                                      *SILENCE_MS_RANGE))
        return VadSettings(threshold=threshold, silence_ms=silence_ms,
                           min_speech_ms=self.min_speech_ms, preroll_ms=self.preroll_ms)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)) or (
            isinstance(value, str) and len(value) > _MAX_VALUE_CHARS):
        raise ValueError(f"{name} must be a number, got {value!r:.40}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


VAD_KEYS = frozenset({"vad", "vad_threshold", "vad_silence_ms"})  # in a query or a metadata frame


def requested_vad(values: Mapping[str, Any], *, on: bool,
                  settings: VadSettings) -> tuple[bool, VadSettings]:
    """(on, settings) after the VAD_KEYS of a query string or a metadata frame, from the
    current ones; raises ValueError, naming the key, on a value that is not understood."""
    if "vad" in values:
        on = parse_flag(values["vad"], "vad")
    return on, settings.updated(values)


def parse_flag(value: Any, name: str) -> bool:
    """`?vad=1` / `{"vad": true}`: a bool, the number 1 or 0, or as text 1/0, true/false, yes/no, on/off."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
        return value.lower() in ("1", "true", "yes", "on")
    raise ValueError(f"{name} must be true or false, got {value!r:.40}")


SpeechEventKind = Literal["speech_started", "speech_stopped"]


class SpeechSegmenter:
    """Frame probabilities -> speech started / stopped, with silero's hysteresis. Pure.

    Speech starts once a run of frames that begins at or above the threshold has stayed out
    of silence (>= silent_below) for min_speech_ms; it starts at that run's first frame. It
    stops after silence_ms of frames of which none reached the threshold again; it stops at
    the first silent frame.
    """

    def __init__(self, settings: VadSettings) -> None:
        self.settings = settings
        self.in_speech = False
        self._frame = 0  # index of the next frame
        self._run_start: int | None = None  # candidate onset (not yet speech) or silence start

    def push(self, probs: np.ndarray) -> list[tuple[SpeechEventKind, int]]:
        """float32 [F] -> (event, frame index where it happened), in order."""
        s = self.settings
        events: list[tuple[SpeechEventKind, int]] = []
        frame_ms = VAD_FRAME * 1000 / MODEL_SAMPLE_RATE
        min_speech = max(2, math.ceil(s.min_speech_ms / frame_ms))
        silence = max(1, math.ceil(s.silence_ms / frame_ms))
        for p in probs.tolist():
            i, self._frame = self._frame, self._frame + 1
            if not self.in_speech:
                if p < s.silent_below:
                    self._run_start = None
                elif self._run_start is None and p >= s.threshold:
                    self._run_start = i
                if self._run_start is not None and i - self._run_start + 1 >= min_speech:
                    events.append(("speech_started", self._run_start))
                    self.in_speech, self._run_start = True, None
            else:
                if p >= s.threshold:
                    self._run_start = None
                elif p < s.silent_below and self._run_start is None:
                    self._run_start = i
                if self._run_start is not None and i - self._run_start + 1 >= silence:
                    events.append(("speech_stopped", self._run_start))
                    self.in_speech, self._run_start = False, None
        return events


@dataclass(frozen=True)
class VadEvent:
    kind: SpeechEventKind
    at_s: float  # where in the stream it happened: seconds since the tracker's first sample
    preroll_16k: np.ndarray | None = None  # speech_started: float32 [T], from just before the
    # onset to the end of the audio fed so far, the start of the new turn


class VadTurnTracker:
    """A hands-free session's ears: PCM 16 kHz in any chunk sizes -> speech events.

    Owned by one ChatSession; runs inline on its receive loop (silero costs well under 1 ms
    per 32 ms frame). Keeps the last preroll + min speech (+ slack) of audio so that a turn
    can begin slightly before the onset that was detected min_speech_ms later.
    """

    def __init__(self, model: SileroVad, settings: VadSettings) -> None:
        self._stream = SileroStream(model)
        self._segmenter = SpeechSegmenter(settings)
        self._recent: deque[np.ndarray] = deque()  # the pre-roll window, oldest first
        self._recent_samples = 0
        self._fed = 0  # samples fed so far
        self._keep = 0
        self.settings = settings

    @property
    def settings(self) -> VadSettings:
        return self._segmenter.settings

    @settings.setter
    def settings(self, settings: VadSettings) -> None:
        """New settings apply from the next frame; the stream's state is kept."""
        self._segmenter.settings = settings
        keep_ms = settings.preroll_ms + settings.min_speech_ms + 200  # + the frame lag
        self._keep = keep_ms * MODEL_SAMPLE_RATE // 1000

    @property
    def in_speech(self) -> bool:
        return self._segmenter.in_speech

    def feed(self, pcm_16k: np.ndarray) -> Iterator[tuple[np.ndarray, VadEvent | None]]:
        """Yields the audio back in pieces of at most 40 ms, each with the event that its end
        produced (None for most), so the caller can act between pieces."""
        for start in range(0, len(pcm_16k), _FEED_SAMPLES):
            piece = np.asarray(pcm_16k[start:start + _FEED_SAMPLES], dtype=np.float32)
            self._remember(piece)
            probs = self._stream.push(piece)
            events = self._segmenter.push(probs)
            if not events:
                yield piece, None
            for n, (kind, frame) in enumerate(events):
                yield (piece if n == 0 else piece[:0]), self._event(kind, frame)

    def _remember(self, piece: np.ndarray) -> None:
        self._recent.append(piece)
        self._recent_samples += len(piece)
        self._fed += len(piece)
        while self._recent_samples - len(self._recent[0]) >= self._keep:
            self._recent_samples -= len(self._recent.popleft())

    def _event(self, kind: SpeechEventKind, frame: int) -> VadEvent:
        at_16k = frame * VAD_FRAME
        at_s = at_16k / MODEL_SAMPLE_RATE
        if kind == "speech_stopped":
            return VadEvent(kind, at_s)
        start = at_16k - self.settings.preroll_ms * MODEL_SAMPLE_RATE // 1000
        recent = np.concatenate(self._recent)
        skip = min(max(start - (self._fed - len(recent)), 0), len(recent))
        return VadEvent(kind, at_s, preroll_16k=recent[skip:])
