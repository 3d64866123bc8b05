"""Test inputs read from tests/fixtures (the /api/chat client itself is web_demo.chat_client)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import soundfile as sf

from utils.audio import MODEL_SAMPLE_RATE, WIRE_SAMPLE_RATE, read_wav, resample
from utils.opus import encode_browser_pages

FIXTURES = Path(__file__).parent / "fixtures"


def speech_16k(name: str) -> np.ndarray:
    """tests/fixtures/speech/<name>.wav as float32 [T] at 16 kHz (the model's rate)."""
    pcm, rate = read_wav(FIXTURES / "speech" / f"{name}.wav")
    return resample(pcm, rate, MODEL_SAMPLE_RATE)


def speech_24k(name: str) -> np.ndarray:
    """tests/fixtures/speech/<name>.wav as float32 [T] at 24 kHz."""
    pcm, rate = read_wav(FIXTURES / "speech" / f"{name}.wav")
    return resample(pcm, rate, WIRE_SAMPLE_RATE)


def tone_pages(seconds: float, freq: float = 440.0) -> list[bytes]:
    """A sine tone as the Ogg pages a browser would send."""
    t = np.arange(int(seconds * WIRE_SAMPLE_RATE)) / WIRE_SAMPLE_RATE
    return encode_browser_pages((0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32))


# upload format -> (PyAV muxer, codec, sample rate): what browsers and phones send
_ENCODINGS = {"mp3": ("mp3", "libmp3lame", 44100), "ogg": ("ogg", "libopus", 48000),
              "webm": ("webm", "libopus", 48000), "m4a": ("ipod", "aac", 44100),
              "aac": ("adts", "aac", 44100)}


def speech_file(name: str, fmt: str) -> bytes:
    """tests/fixtures/speech/<name>.wav as an upload: wav as is, flac, or stereo mp3, ogg (Opus),
    webm (Opus), m4a (AAC), aac (ADTS) encoded with PyAV."""
    path = FIXTURES / "speech" / f"{name}.wav"
    pcm, rate = read_wav(path)
    if fmt == "wav":
        return path.read_bytes()
    if fmt == "flac":
        buf = io.BytesIO()
        sf.write(buf, pcm, rate, format="FLAC")
        return buf.getvalue()
    import av

    muxer, codec, out_rate = _ENCODINGS[fmt]
    pcm = resample(pcm, rate, out_rate)
    buf = io.BytesIO()
    with av.open(buf, "w", format=muxer) as out:
        stream = out.add_stream(codec, rate=out_rate, layout="stereo")
        frame = av.AudioFrame.from_ndarray(np.stack([pcm, pcm]), format="fltp", layout="stereo")
        frame.sample_rate = out_rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()


def plain_text(text: str) -> str:
    """Lowercase words without punctuation: Whisper's int8 kernels differ by CPU, and so does
    whether a transcript ends with a full stop."""
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())
