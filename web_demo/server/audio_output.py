"""The TTS service's audio encoders: the OpenAI speech API's `response_format`s.

One encoder per response, fed float32 mono PCM [T] in [-1, 1] at the engine's rate as the
chunks are synthesized. Every `encode()` returns the bytes ready so far and `finish()` the
tail; their concatenation is the file. Blocking CPU work: call it from a thread.

- pcm: raw signed 16-bit little-endian mono at the input rate (OpenAI: 24 kHz), no header.
- wav: a 44-byte RIFF/WAVE PCM16 header and the same samples. Streamed, the length is not
  known up front, so the RIFF and data sizes are 0xFFFFFFFF, the usual convention of
  streaming servers; ffmpeg, browsers and libsndfile then read to the end of the data.
- mp3, opus (Ogg Opus), aac (ADTS), flac: PyAV encoders and muxers writing to memory.

`streaming=False` makes one complete file whose header holds the totals: exact wav sizes,
mp3's Xing/LAME tag (decoders trim the encoder delay), FLAC's STREAMINFO sample count.
Those headers are rewritten at the end, so such an encoder returns everything from
`finish()`. Streamed, the muxer writes to a non-seekable sink and never goes back.

Float to int16 follows ffmpeg (round(x * 32768), clipped), so wav, pcm and flac carry the
same samples. `utils.audio.wav_bytes` is not used: libsndfile floors (round down) instead.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal, Protocol

import av
import numpy as np

from web_demo.server.errors import BadRequest

FORMATS: tuple[str, ...] = ("mp3", "opus", "aac", "flac", "wav", "pcm")

# opus: the bytes are an Ogg file, whose registered type is audio/ogg (RFC 7845 §9);
# audio/opus (RFC 7587) names the bare RTP payload.
CONTENT_TYPES: dict[str, str] = {
    "mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
    "wav": "audio/wav", "pcm": "audio/pcm"}

_UNKNOWN_SIZE = 0xFFFFFFFF  # RIFF and data sizes of a streamed WAV


class AudioEncoder(Protocol):
    """Encodes one response's audio; owned by the handler that streams the response."""

    def encode(self, pcm: np.ndarray) -> bytes:
        """float32 [T] at the encoder's rate -> the bytes that became ready (may be b"")."""
        ...

    def finish(self) -> bytes:
        """The rest of the file; the encoder is spent afterwards."""
        ...


def open_encoder(fmt: str, sample_rate: int, *, streaming: bool) -> AudioEncoder:
    """An encoder for `fmt` fed PCM at `sample_rate`; BadRequest names the formats we serve."""
    if fmt not in FORMATS:
        raise BadRequest(f"response_format must be one of {', '.join(FORMATS)}, got {fmt[:40]!r}",
                         param="response_format")
    if sample_rate <= 0:
        raise ValueError(f"sample rate must be positive, got {sample_rate}")
    if fmt == "pcm":
        return _PcmEncoder()
    if fmt == "wav":
        return _WavEncoder(sample_rate, streaming=streaming)
    return _PyAVEncoder(_CODECS[fmt], sample_rate, streaming=streaming)


def encode_whole(fmt: str, pcm: np.ndarray, sample_rate: int) -> bytes:
    """float32 [T] -> one complete file in `fmt` (a non-streamed response)."""
    encoder = open_encoder(fmt, sample_rate, streaming=False)
    return encoder.encode(pcm) + encoder.finish()


def pcm16(pcm: np.ndarray) -> np.ndarray:
    """float32 [T] -> int16 [T] as ffmpeg converts (round(x * 32768), clipped)."""
    scaled = np.rint(_checked(pcm) * np.float32(32768.0))
    return np.clip(scaled, -32768, 32767).astype("<i2")


def wav_header(sample_rate: int, data_bytes: int | None) -> bytes:
    """The 44-byte RIFF/WAVE header of mono PCM16; None: a stream of unknown length."""
    data_size = _UNKNOWN_SIZE if data_bytes is None else data_bytes
    riff_size = _UNKNOWN_SIZE if data_bytes is None else 36 + data_bytes
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", riff_size, b"WAVE", b"fmt ", 16,
                       1, 1, sample_rate, 2 * sample_rate, 2, 16,  # PCM, mono, 2-byte frames
                       b"data", data_size)


def _checked(pcm: np.ndarray) -> np.ndarray:
    """Any float [T] -> float32 [T] in [-1, 1] (NaN as silence)."""
    pcm = np.asarray(pcm, dtype=np.float32)
    if pcm.ndim != 1:
        raise ValueError(f"expected mono PCM of shape [T], got {pcm.shape}")
    clean: np.ndarray = np.clip(np.nan_to_num(pcm, nan=0.0), -1.0, 1.0)
    return clean


class _PcmEncoder:
    """Headerless: every chunk is final as soon as it is converted, streamed or not."""

    def encode(self, pcm: np.ndarray) -> bytes:
        return pcm16(pcm).tobytes()

    def finish(self) -> bytes:
        return b""


class _WavEncoder:
    """Streamed: the unknown-size header, then samples. Whole: held until their size is known."""

    def __init__(self, sample_rate: int, *, streaming: bool) -> None:
        self._rate = sample_rate
        self._streaming = streaming
        self._header_sent = False
        self._held: list[bytes] = []  # whole-file mode only

    def encode(self, pcm: np.ndarray) -> bytes:
        data = pcm16(pcm).tobytes()
        if not self._streaming:
            self._held.append(data)
            return b""
        return self._header() + data

    def finish(self) -> bytes:
        if self._streaming:
            return self._header()
        data = b"".join(self._held)
        self._held.clear()
        return wav_header(self._rate, len(data)) + data

    def _header(self) -> bytes:
        if self._header_sent:
            return b""
        self._header_sent = True
        return wav_header(self._rate, None)


_EncoderName = Literal["libmp3lame", "libopus", "aac", "flac"]  # in av.codecs_available


@dataclass(frozen=True)
class _Codec:
    muxer: str
    encoder: _EncoderName
    sample_fmt: str  # the encoder's native input, so PyAV converts only once
    bit_rate: int | None  # None: lossless
    muxer_options: dict[str, str] = field(default_factory=dict)


# Bit rates for mono speech (OpenAI does not publish its own); 48 kHz input gets the same.
_CODECS: dict[str, _Codec] = {
    "mp3": _Codec("mp3", "libmp3lame", "fltp", 64_000),
    # Ogg's default 1 s pages would hold a streamed reply back. 40 ms pages (two 20 ms Opus
    # packets, like utils.opus's browser pages) hold back at most 40 ms; their headers cost
    # about 5 kb/s (37 instead of 32 kb/s measured on 10 s of 24 kHz audio).
    "opus": _Codec("ogg", "libopus", "flt", 32_000, {"page_duration": "40000"}),
    "aac": _Codec("adts", "aac", "fltp", 64_000),
    # The 8 KiB PADDING block is for tag editors; a response has none.
    "flac": _Codec("flac", "flac", "s16", None, {"metadata_header_padding": "0"}),
}


class _ByteSink:
    """A write-only file for the muxer: no seek(), so PyAV tells it the output is a stream."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        """What was written since the last take; nothing is kept."""
        data = b"".join(self._parts)
        self._parts.clear()
        return data


class _PyAVEncoder:
    """One response's PyAV output container with one mono audio stream."""

    def __init__(self, codec: _Codec, sample_rate: int, *, streaming: bool) -> None:
        self._rate = sample_rate
        self._samples = 0  # fed so far: the next frame's pts in 1/sample_rate units
        self._out: _ByteSink | io.BytesIO = _ByteSink() if streaming else io.BytesIO()
        # flush_packets: the AVIO buffer (32 KiB) goes to the sink after every packet.
        # bitexact: the same audio gives the same bytes (Ogg's serial number is otherwise
        # random) and no library versions are written into the headers.
        options = {"flush_packets": "1", "fflags": "+bitexact", **codec.muxer_options}
        self._container = av.open(self._out, "w", format=codec.muxer, container_options=options)
        self._stream = self._container.add_stream(
            codec.encoder, rate=_codec_rate(codec.encoder, sample_rate), layout="mono",
            format=codec.sample_fmt)
        if codec.bit_rate is not None:
            self._stream.bit_rate = codec.bit_rate
        self._container.start_encoding()  # the header goes out before the first audio

    def encode(self, pcm: np.ndarray) -> bytes:
        pcm = _checked(pcm)
        if pcm.size:
            frame = av.AudioFrame.from_ndarray(pcm[None, :], format="flt", layout="mono")  # [1, T]
            frame.sample_rate = self._rate
            frame.time_base = Fraction(1, self._rate)
            frame.pts = self._samples
            self._samples += len(pcm)
            self._mux(frame)
        return self._out.take() if isinstance(self._out, _ByteSink) else b""

    def finish(self) -> bytes:
        self._mux(None)  # drains the encoder: its lookahead and the last partial frame
        self._container.close()  # the trailer; a seekable file also gets its header rewritten
        return self._out.take() if isinstance(self._out, _ByteSink) else self._out.getvalue()

    def _mux(self, frame: av.AudioFrame | None) -> None:
        # stream.encode() runs PyAV's AudioResampler to the codec's rate, sample format and
        # frame size (lame 576/1152, libopus 960, aac 1024 samples), so chunks of any
        # length go in and the FIFO keeps less than one codec frame.
        for packet in self._stream.encode(frame):
            self._container.mux(packet)


def _codec_rate(encoder: _EncoderName, sample_rate: int) -> int:
    """The lowest rate the encoder takes at or above the input (no band is lost), else its top.

    Opus takes 8/12/16/24/48 kHz, so 22.05 kHz is encoded at 24 and 44.1 kHz at 48.
    """
    rates = av.Codec(encoder, "w").audio_rates
    if not rates:
        return sample_rate  # flac: any rate
    higher = [rate for rate in rates if rate >= sample_rate]
    return min(higher) if higher else max(rates)
