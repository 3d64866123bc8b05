"""Ogg/Opus at 24 kHz, the audio format of /api/chat in both directions.

The server keeps one continuous stream per connection and direction: sphn decodes the
client's (the server asks for the model's 16 kHz: libopus decodes at any of its rates, more
cheaply than at 24 kHz plus a resample); the reply stream is libopus through PyAV (whose
encoder, unlike sphn's, takes a complexity and releases the GIL), paged by utils/ogg.py. The
browser-style encoder (20 ms frames, 2 per Ogg page, as opus-recorder in the upstream client
sends) is for test clients, scripts and benchmarks.
"""

from __future__ import annotations

import io
import secrets
import struct

import av
import numpy as np
import sphn

from utils.audio import WIRE_SAMPLE_RATE
from utils.ogg import BOS, OggPageWriter, split_ogg_pages

OPUS_FRAME_SAMPLES = 960  # one 40 ms reply frame, and one Ogg page, at 24 kHz
OGG_GRANULES_PER_FRAME = 1920  # Ogg Opus positions count 48 kHz samples
OPUS_BITRATE = 32000  # transparent enough for 24 kHz speech
# libopus at its default complexity 10 costs ~4x the CPU of 5 for speech at this bitrate
# (benchmarks/opus_encode.py), and the reply encoder is most of a chat server's CPU.
OPUS_COMPLEXITY = 5


class OpusStreamDecoder:
    """Decodes one connection's continuous Ogg/Opus stream into float32 PCM at `sample_rate`
    (24 kHz by default; 8, 12, 16 and 48 kHz too)."""

    def __init__(self, sample_rate: int = WIRE_SAMPLE_RATE) -> None:
        self._sample_rate = sample_rate
        self._reader = sphn.OpusStreamReader(sample_rate)

    def decode(self, ogg: bytes) -> np.ndarray:
        """Raises ValueError on bytes the reader rejects; the stream goes on with later pages.

        sphn keeps rejected bytes buffered and fails on every later call, so the reader is
        replaced; a fresh one decodes audio pages without the stream's header pages.
        """
        try:
            pcm = self._reader.append_bytes(ogg)
        except ValueError:
            self._reader = sphn.OpusStreamReader(self._sample_rate)
            raise
        return np.asarray(pcm, dtype=np.float32)


class OpusStreamEncoder:
    """Encodes float32 PCM at 24 kHz into one continuous Ogg/Opus stream, one 40 ms frame a
    page, each page returned by the call that completes its frame (the headers come first)."""

    def __init__(self, *, bitrate: int = OPUS_BITRATE, complexity: int = OPUS_COMPLEXITY) -> None:
        codec = av.CodecContext.create("libopus", "w")
        codec.sample_rate, codec.layout, codec.format = WIRE_SAMPLE_RATE, "mono", "flt"
        codec.bit_rate = bitrate
        codec.options = {"application": "audio", "compression_level": str(complexity),
                         "frame_duration": str(OPUS_FRAME_SAMPLES * 1000 // WIRE_SAMPLE_RATE)}
        codec.open()
        assert codec.extradata is not None  # libopus's extradata is the OpusHead packet
        self._codec = codec
        self._pages = OggPageWriter(serial=secrets.randbits(32))
        self._granule = 0  # 48 kHz samples of all frames paged so far
        self._pending = np.zeros(0, np.float32)  # samples short of a whole frame
        # OpusHead (RFC 7845 section 5.1, with libopus's pre-skip), then OpusTags
        self._headers: bytes | None = (self._pages.page(codec.extradata, 0, flags=BOS)
                                       + self._pages.page(_opus_tags(), 0))

    def encode(self, pcm_24k: np.ndarray) -> bytes:
        """Returns the Ogg pages completed by this PCM (possibly b"")."""
        pcm = np.concatenate([self._pending, np.asarray(pcm_24k, np.float32)])
        whole = len(pcm) - len(pcm) % OPUS_FRAME_SAMPLES
        self._pending = pcm[whole:]
        out = [self._headers] if self._headers else []
        self._headers = None
        if whole:
            frame = av.AudioFrame.from_ndarray(pcm[None, :whole], format="flt", layout="mono")
            frame.sample_rate = WIRE_SAMPLE_RATE
            for packet in self._codec.encode(frame):
                self._granule += OGG_GRANULES_PER_FRAME
                out.append(self._pages.page(bytes(packet), self._granule))
        return b"".join(out)

    def flush(self) -> bytes:
        """Pads the partial frame with silence so the tail of a reply is not held back."""
        if len(self._pending) == 0:
            return b""
        return self.encode(np.zeros(OPUS_FRAME_SAMPLES - len(self._pending), dtype=np.float32))


def _opus_tags() -> bytes:
    """The OpusTags packet (RFC 7845 section 5.2): a vendor string, no comments."""
    vendor = b"fun-audio-chat"
    return b"OpusTags" + struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", 0)


def encode_browser_pages(pcm_24k: np.ndarray) -> list[bytes]:
    """float32 [T] at 24 kHz -> Ogg pages as a browser sends them (20 ms frames, 2 per page).

    The first pages are the Ogg/Opus headers. Concatenated they form one Ogg stream.
    """
    buf = io.BytesIO()
    with av.open(buf, "w", format="ogg", options={"page_duration": "40000"}) as container:
        stream = container.add_stream(
            "libopus", rate=WIRE_SAMPLE_RATE, options={"frame_duration": "20", "application": "voip"})
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm_24k, dtype=np.float32)[None, :], format="flt", layout="mono")
        frame.sample_rate = WIRE_SAMPLE_RATE
        for packet in (*stream.encode(frame), *stream.encode(None)):
            container.mux(packet)
    return split_ogg_pages(buf.getvalue())


def decode_pages(pages: list[bytes]) -> np.ndarray:
    """Decodes a whole Ogg/Opus stream given as pages -> float32 [T] at 24 kHz."""
    decoder = OpusStreamDecoder()
    parts = [decoder.decode(p) for p in pages]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)
