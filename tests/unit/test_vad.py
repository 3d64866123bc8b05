"""vad.py: the real silero-vad streamed over speech fixtures, the turn logic, the settings."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import speech_16k
from utils.audio import MODEL_SAMPLE_RATE
from web_demo.server.config import ChatConfig
from web_demo.server.vad import (
    VAD_FRAME,
    SileroStream,
    SileroVad,
    SpeechSegmenter,
    VadEvent,
    VadSettings,
    VadTurnTracker,
    parse_flag,
    requested_vad,
)

RATE_16K = MODEL_SAMPLE_RATE
NAMES = ("hello", "fox", "weather")
MODEL = SileroVad()  # one per test module, as the chat route keeps one per server


def silence_16k(seconds: float, level: float = 1e-4) -> np.ndarray:
    """A faint noise floor, as a quiet room through a microphone."""
    rng = np.random.default_rng(1)
    return (rng.standard_normal(int(seconds * RATE_16K)) * level).astype(np.float32)


def events_of(tracker: VadTurnTracker, pcm_16k: np.ndarray, chunk: int = 640) -> list[VadEvent]:
    events = []
    for start in range(0, len(pcm_16k), chunk):
        events += [e for _, e in tracker.feed(pcm_16k[start:start + chunk]) if e is not None]
    return events


def speech_span_s(pcm_16k: np.ndarray) -> tuple[float, float]:
    """Where the fixture is loud: (first, last) time above 5% of its peak."""
    loud = np.flatnonzero(np.abs(pcm_16k) > 0.05 * np.abs(pcm_16k).max())
    return loud[0] / RATE_16K, loud[-1] / RATE_16K


@pytest.mark.parametrize("name", NAMES)
def test_streaming_in_odd_chunks_gives_the_sequence_probabilities(name: str) -> None:
    pcm = speech_16k(name)
    whole = len(pcm) // VAD_FRAME * VAD_FRAME
    expected = MODEL.speech_probs(pcm[:whole])
    stream, rng, got, at = SileroStream(MODEL), np.random.default_rng(0), [], 0
    sizes = [1, 511, 513, 64, 1024 + 7]  # below, across and above a frame
    while at < len(pcm):
        size = sizes[len(got) % len(sizes)] if len(got) < 10 else int(rng.integers(1, 3000))
        got.append(stream.push(pcm[at:at + size]))
        at += size
    streamed = np.concatenate(got)
    assert len(streamed) == len(expected) == stream.frames
    np.testing.assert_allclose(streamed, expected, atol=1e-5)
    assert (expected >= 0.5).sum() * VAD_FRAME > 0.4 * len(pcm)  # there is speech to agree on


def test_two_streams_on_one_model_keep_their_own_state() -> None:
    fox = speech_16k("fox")[:40 * VAD_FRAME]
    alone = SileroStream(MODEL).push(fox)
    a, b = SileroStream(MODEL), SileroStream(MODEL)
    b.push(np.zeros(20 * VAD_FRAME, np.float32))
    interleaved = [a.push(fox[i:i + 1000]) for i in range(0, len(fox), 1000)]
    np.testing.assert_allclose(np.concatenate(interleaved), alone, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_speech_start_and_stop_are_found_where_the_speech_is(name: str) -> None:
    speech = speech_16k(name)
    lead_s = 1.0
    pcm = np.concatenate([silence_16k(lead_s), speech, silence_16k(1.5)])
    settings = VadSettings(silence_ms=500)
    tracker = VadTurnTracker(MODEL, settings)
    events = events_of(tracker, pcm, chunk=1234)
    assert [e.kind for e in events] == ["speech_started", "speech_stopped"]
    started, stopped = events
    first, last = speech_span_s(speech)
    assert lead_s + first - 0.1 <= started.at_s <= lead_s + first + 0.3
    assert lead_s + last - 0.3 <= stopped.at_s <= lead_s + last + 0.3
    assert not tracker.in_speech


def test_the_pre_roll_is_the_audio_from_just_before_the_onset() -> None:
    pcm = np.concatenate([silence_16k(3.0), speech_16k("fox"), silence_16k(1.0)])
    tracker = VadTurnTracker(MODEL, VadSettings(preroll_ms=300))
    fed = 0
    for piece, event in tracker.feed(pcm):
        fed += len(piece)
        if event is not None and event.kind == "speech_started":
            break
    assert event is not None and event.preroll_16k is not None
    start = round((event.at_s - 0.3) * RATE_16K)
    np.testing.assert_array_equal(event.preroll_16k, pcm[start:fed])  # up to what was fed
    assert 0.3 + 0.25 <= len(event.preroll_16k) / RATE_16K <= 0.3 + 0.25 + 0.2


@pytest.mark.parametrize("kind", ["silence", "tone", "noise"])
def test_silence_tone_or_noise_alone_starts_no_speech(kind: str) -> None:
    n = 6 * RATE_16K
    t = np.arange(n) / RATE_16K
    pcm = {"silence": np.zeros(n, np.float32),
           "tone": (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
           "noise": (np.random.default_rng(2).standard_normal(n) * 0.1).astype(np.float32)}[kind]
    assert events_of(VadTurnTracker(MODEL, VadSettings()), pcm) == []


def test_memory_stays_bounded_over_a_long_stream() -> None:
    tracker = VadTurnTracker(MODEL, VadSettings())
    events_of(tracker, silence_16k(30.0), chunk=3200)
    pcm = np.concatenate([speech_16k("hello"), silence_16k(1.0)])
    (started, _) = events_of(tracker, pcm)
    assert started.preroll_16k is not None and len(started.preroll_16k) < RATE_16K


def frames(*runs: tuple[float, int]) -> np.ndarray:
    return np.concatenate([np.full(n, p, np.float32) for p, n in runs])


def test_segmenter_needs_min_speech_and_uses_silero_hysteresis() -> None:
    seg = SpeechSegmenter(VadSettings(threshold=0.5, silence_ms=320, min_speech_ms=250))  # 10, 8 frames
    assert seg.push(frames((0.9, 7), (0.1, 20))) == []  # 224 ms: a click, not a turn
    # 0.4 is below the threshold but above threshold - 0.15: it carries a started run on
    assert seg.push(frames((0.9, 1), (0.4, 7))) == [("speech_started", 27)]
    assert seg.push(frames((0.4, 50))) == []  # ...and never ends one
    assert seg.push(frames((0.2, 9), (0.6, 1), (0.2, 9))) == []  # a pause shorter than 320 ms
    assert seg.push(frames((0.4, 1))) == [("speech_stopped", 95)]  # 10th frame of the pause


def test_new_settings_apply_to_a_running_stream() -> None:
    seg = SpeechSegmenter(VadSettings(silence_ms=2000))
    assert seg.push(frames((0.9, 10), (0.0, 20))) == [("speech_started", 0)]
    seg.settings = VadSettings(silence_ms=320)
    assert seg.push(frames((0.0, 1))) == [("speech_stopped", 10)]


@pytest.mark.parametrize("bad", [dict(threshold=0.99), dict(threshold=0.0), dict(silence_ms=50),
                                 dict(silence_ms=9000), dict(silence_ms=500.5),
                                 dict(threshold="0.5"), dict(min_speech_ms=32), dict(preroll_ms=-1)])
def test_bad_settings_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        VadSettings(**bad)  # type: ignore[arg-type]


def test_server_flags_are_checked_at_start() -> None:
    assert ChatConfig().vad == VadSettings(threshold=0.5, silence_ms=500)
    with pytest.raises(ValueError, match="vad_threshold"):
        ChatConfig(vad_threshold=1.5)
    with pytest.raises(ValueError, match="vad_silence_ms"):
        ChatConfig(vad_silence_ms=10)


def test_client_values_are_parsed_and_clamped() -> None:
    base = VadSettings()
    assert requested_vad({}, on=False, settings=base) == (False, base)
    on, s = requested_vad({"vad": "1", "vad_threshold": "0.7", "vad_silence_ms": "800"},
                          on=False, settings=base)
    assert on and s.threshold == 0.7 and s.silence_ms == 800
    on, s = requested_vad({"vad_threshold": 5, "vad_silence_ms": 1}, on=True, settings=base)
    assert on and (s.threshold, s.silence_ms) == (0.95, 100)  # a slider pushed too far
    assert requested_vad({"vad": False}, on=True, settings=base)[0] is False
    for values in ({"vad": "maybe"}, {"vad": 2}, {"vad_threshold": "loud"}, {"vad_threshold": None},
                   {"vad_threshold": True}, {"vad_silence_ms": "nan"}, {"vad_silence_ms": "inf"},
                   {"vad_threshold": "0." + "5" * 40}):
        with pytest.raises(ValueError, match="vad"):
            requested_vad(values, on=False, settings=base)
    assert parse_flag("yes", "vad") and parse_flag(1, "vad") and not parse_flag("0", "vad")
