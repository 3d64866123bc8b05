"""The Realtime API's three audio formats: their names on the wire and their codecs.

Pure numpy, no I/O. PCM16 is signed 16-bit little-endian mono at 24 kHz; G.711 u-law and
A-law are one byte a sample at 8 kHz (ITU-T G.711). Resampling 8 kHz <-> 24 kHz is the
session's job (`utils.audio.resample`); these functions keep the format's own rate.

The G.711 codecs are lookup tables built once from the standard's segment formulas: 256
entries to decode, 65536 (every int16) to encode, so a conversion is one numpy take.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import numpy as np

from web_demo.server.audio_output import pcm16


class AudioFormat(StrEnum):
    """An input or output audio format; the value is the beta API's name."""

    PCM16 = "pcm16"
    G711_ULAW = "g711_ulaw"
    G711_ALAW = "g711_alaw"

    @property
    def sample_rate(self) -> int:
        return 24_000 if self is AudioFormat.PCM16 else 8_000

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self is AudioFormat.PCM16 else 1

    def ga(self) -> dict[str, Any]:
        """The GA API's format object, e.g. {"type": "audio/pcm", "rate": 24000}."""
        return dict(_GA_FORMATS[self])


_GA_FORMATS: dict[AudioFormat, dict[str, Any]] = {
    AudioFormat.PCM16: {"type": "audio/pcm", "rate": 24_000},
    AudioFormat.G711_ULAW: {"type": "audio/pcmu"},
    AudioFormat.G711_ALAW: {"type": "audio/pcma"},
}
GA_FORMAT_TYPES: dict[str, AudioFormat] = {str(v["type"]): k for k, v in _GA_FORMATS.items()}


def _segment(magnitude: np.ndarray, first_end: int) -> np.ndarray:
    """G.711 segment number 0..8 of each magnitude; segment ends double from `first_end`."""
    ends = first_end * (1 << np.arange(8)) + ((1 << np.arange(8)) - 1)  # 0x1F,0x3F,... / 0x3F,...
    return np.searchsorted(ends, magnitude, side="left")


def _ulaw_tables() -> tuple[np.ndarray, np.ndarray]:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    # decode: ((mantissa << 3) + bias) << exponent, minus the bias; the code is stored inverted
    magnitude = (((codes & 0x0F) << 3) + 0x84) << ((codes & 0x70) >> 4)
    decode = np.where(codes & 0x80, 0x84 - magnitude, magnitude - 0x84).astype(np.int16)
    # encode from 14-bit magnitude: clip, add the bias, find the segment, keep 4 mantissa bits
    linear = np.arange(-32768, 32768, dtype=np.int32) >> 2
    mask = np.where(linear < 0, 0x7F, 0xFF)
    value = np.minimum(np.abs(linear), 8159) + 33
    seg = _segment(value, 0x3F)
    code = (seg << 4) | ((value >> (seg + 1)) & 0x0F)
    encode = np.where(seg >= 8, 0x7F, code) ^ mask
    return decode, encode.astype(np.uint8)


def _alaw_tables() -> tuple[np.ndarray, np.ndarray]:
    codes = np.arange(256, dtype=np.int32) ^ 0x55  # even bits are inverted on the line
    mantissa, seg = (codes & 0x0F) << 4, (codes & 0x70) >> 4
    magnitude = np.where(seg == 0, mantissa + 8, (mantissa + 0x108) << np.maximum(seg - 1, 0))
    decode = np.where(codes & 0x80, magnitude, -magnitude).astype(np.int16)
    # encode from 13-bit: negative values are one's complement magnitudes
    linear = np.arange(-32768, 32768, dtype=np.int32) >> 3
    mask = np.where(linear >= 0, 0xD5, 0x55)
    value = np.where(linear >= 0, linear, -linear - 1)
    seg_e = _segment(value, 0x1F)
    shift = np.where(seg_e < 2, 1, seg_e)
    code = (seg_e << 4) | ((value >> shift) & 0x0F)
    encode = np.where(seg_e >= 8, 0x7F, code) ^ mask
    return decode, encode.astype(np.uint8)


_ULAW_DECODE, _ULAW_ENCODE = _ulaw_tables()  # int16 [256], uint8 [65536] indexed by int16 + 32768
_ALAW_DECODE, _ALAW_ENCODE = _alaw_tables()


def ulaw_decode(codes: np.ndarray) -> np.ndarray:
    """uint8 u-law codes [T] -> int16 linear [T]."""
    return np.asarray(_ULAW_DECODE[np.asarray(codes, dtype=np.uint8)])


def ulaw_encode(linear: np.ndarray) -> np.ndarray:
    """int16 linear [T] -> uint8 u-law codes [T]."""
    return np.asarray(_ULAW_ENCODE[np.asarray(linear, dtype=np.int16).astype(np.int32) + 32768])


def alaw_decode(codes: np.ndarray) -> np.ndarray:
    """uint8 A-law codes [T] -> int16 linear [T]."""
    return np.asarray(_ALAW_DECODE[np.asarray(codes, dtype=np.uint8)])


def alaw_encode(linear: np.ndarray) -> np.ndarray:
    """int16 linear [T] -> uint8 A-law codes [T]."""
    return np.asarray(_ALAW_ENCODE[np.asarray(linear, dtype=np.int16).astype(np.int32) + 32768])


def decode_audio(data: bytes, fmt: AudioFormat) -> np.ndarray:
    """Wire bytes -> float32 [T] in [-1, 1] at `fmt.sample_rate` (24 kHz or 8 kHz)."""
    if fmt is AudioFormat.PCM16:
        if len(data) % 2:
            raise ValueError(f"16-bit PCM needs an even number of bytes, got {len(data)}")
        linear = np.frombuffer(data, dtype="<i2")
    elif fmt is AudioFormat.G711_ULAW:
        linear = ulaw_decode(np.frombuffer(data, dtype=np.uint8))
    else:
        linear = alaw_decode(np.frombuffer(data, dtype=np.uint8))
    out: np.ndarray = linear.astype(np.float32) / np.float32(32768.0)
    return out


def encode_audio(pcm: np.ndarray, fmt: AudioFormat) -> bytes:
    """float32 [T] at `fmt.sample_rate` -> wire bytes (int16 rounding as ffmpeg, clipped)."""
    linear = pcm16(pcm)  # int16 [T], little-endian
    if fmt is AudioFormat.PCM16:
        return linear.tobytes()
    if fmt is AudioFormat.G711_ULAW:
        return ulaw_encode(linear).tobytes()
    return alaw_encode(linear).tobytes()
