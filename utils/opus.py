"""Ogg/Opus at 24 kHz, the audio format of /api/chat in both directions.

The server side wraps sphn (one continuous stream per connection and direction). The
browser-style encoder (PyAV/libopus, 20 ms frames, 2 per Ogg page, as opus-recorder in the
upstream client sends) is for test clients, scripts and benchmarks.
"""

from __future__ import annotations

import io

import numpy as np
import sphn

from utils.audio import WIRE_SAMPLE_RATE

OPUS_FRAME_SAMPLES = 960  # sphn's writer emits one 40 ms frame per Ogg page at 24 kHz
OGG_HEADER_BYTES = 27  # fixed part of an Ogg page header, before the segment table


class OpusStreamDecoder:
    """Decodes one connection's continuous Ogg/Opus stream into float32 PCM at 24 kHz."""

    def __init__(self) -> None:
        self._reader = sphn.OpusStreamReader(WIRE_SAMPLE_RATE)

    def decode(self, ogg: bytes) -> np.ndarray:
        """Raises ValueError on bytes the reader rejects; the stream goes on with later pages.

        sphn keeps rejected bytes buffered and fails on every later call, so the reader is
        replaced; a fresh one decodes audio pages without the stream's header pages.
        """
        try:
            pcm = self._reader.append_bytes(ogg)
        except ValueError:
            self._reader = sphn.OpusStreamReader(WIRE_SAMPLE_RATE)
            raise
        return np.asarray(pcm, dtype=np.float32)


class OpusStreamEncoder:
    """Encodes float32 PCM at 24 kHz into one continuous Ogg/Opus stream (40 ms pages)."""

    def __init__(self) -> None:
        self._writer = sphn.OpusStreamWriter(WIRE_SAMPLE_RATE)
        self._buffered = 0  # samples inside the writer that are not yet a whole frame

    def encode(self, pcm_24k: np.ndarray) -> bytes:
        """Returns the Ogg pages completed by this PCM (possibly b"")."""
        self._buffered = (self._buffered + len(pcm_24k)) % OPUS_FRAME_SAMPLES
        return self._writer.append_pcm(np.ascontiguousarray(pcm_24k, dtype=np.float32))

    def flush(self) -> bytes:
        """Pads the partial frame with silence so the tail of a reply is not held back."""
        if self._buffered == 0:
            return b""
        return self.encode(np.zeros(OPUS_FRAME_SAMPLES - self._buffered, dtype=np.float32))


def encode_browser_pages(pcm_24k: np.ndarray) -> list[bytes]:
    """float32 [T] at 24 kHz -> Ogg pages as a browser sends them (20 ms frames, 2 per page).

    The first pages are the Ogg/Opus headers. Concatenated they form one Ogg stream.
    """
    import av  # only clients need it; the server path never imports PyAV

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


def split_ogg_pages(data: bytes) -> list[bytes]:
    """Splits an Ogg byte stream into its pages using each page header's segment table.

    Raises ValueError unless `data` is a sequence of whole, well-formed pages (a truncated
    page fed to the stream reader would corrupt every later page of the connection).
    """
    pages, pos = [], 0
    while pos < len(data):
        if data[pos:pos + 4] != b"OggS" or pos + OGG_HEADER_BYTES > len(data):
            raise ValueError(f"no Ogg page at byte {pos}")
        if data[pos + 4] != 0:
            raise ValueError(f"unsupported Ogg version {data[pos + 4]} at byte {pos}")
        n_segments = data[pos + 26]
        header_end = pos + OGG_HEADER_BYTES + n_segments
        if header_end > len(data):
            raise ValueError(f"truncated Ogg page header at byte {pos}")
        page_end = header_end + sum(data[pos + OGG_HEADER_BYTES:header_end])
        if page_end > len(data):
            raise ValueError(f"truncated Ogg page at byte {pos}: {page_end - len(data)} bytes missing")
        pages.append(data[pos:page_end])
        pos = page_end
    return pages


def decode_pages(pages: list[bytes]) -> np.ndarray:
    """Decodes a whole Ogg/Opus stream given as pages -> float32 [T] at 24 kHz."""
    decoder = OpusStreamDecoder()
    parts = [decoder.decode(p) for p in pages]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)
