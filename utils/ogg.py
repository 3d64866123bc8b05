"""Ogg pages (RFC 3533): splitting a byte stream into pages, and writing one packet a page.

The writer exists because libavformat's Ogg muxer keeps the newest page back until the next
packet arrives (PyAV cannot flush it), which would delay every reply by one Opus frame.
"""

from __future__ import annotations

import struct
import zlib

OGG_HEADER_BYTES = 27  # fixed part of an Ogg page header, before the segment table
BOS = 0x02  # header type flag of the first page of a logical stream
_PAGE_HEADER = struct.Struct("<4sBBqIII")  # capture, version, flags, granule, serial, seq, crc
_MAX_PACKET_BYTES = 255 * 255 - 1  # what one page's segment table can describe

# Ogg's CRC-32 is zlib's polynomial without bit reflection: reflect every byte in, run
# zlib's (C) CRC with zero init and no final xor, and reflect the 32-bit result back.
_REFLECT_BYTE = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


def ogg_crc(data: bytes) -> int:
    reflected = zlib.crc32(data.translate(_REFLECT_BYTE), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)


class OggPageWriter:
    """One logical Ogg stream, each packet on its own page, returned as soon as it is put."""

    def __init__(self, serial: int) -> None:
        self._serial = serial
        self._sequence = 0

    def page(self, packet: bytes, granule: int, *, flags: int = 0) -> bytes:
        """One page holding `packet`; `granule` is the stream position at its end."""
        if len(packet) > _MAX_PACKET_BYTES:
            raise ValueError(f"packet of {len(packet)} bytes does not fit one Ogg page")
        full, rest = divmod(len(packet), 255)
        lacing = bytes([255] * full + [rest])
        header = _PAGE_HEADER.pack(b"OggS", 0, flags, granule, self._serial, self._sequence, 0)
        page = bytearray(header + bytes([len(lacing)]) + lacing + packet)
        struct.pack_into("<I", page, 22, ogg_crc(bytes(page)))
        self._sequence += 1
        return bytes(page)


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
