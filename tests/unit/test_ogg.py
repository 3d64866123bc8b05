from __future__ import annotations

import struct

import numpy as np
import pytest

from utils.ogg import BOS, OggPageWriter, ogg_crc, split_ogg_pages
from utils.opus import encode_browser_pages


def test_crc_equals_libavformats_on_its_own_pages() -> None:
    pages = encode_browser_pages(np.zeros(24000, np.float32))
    for page in pages:
        blanked = page[:22] + b"\0\0\0\0" + page[26:]
        assert ogg_crc(blanked) == struct.unpack_from("<I", page, 22)[0]


@pytest.mark.parametrize("size", [0, 1, 254, 255, 256, 510, 5000])
def test_a_written_page_holds_its_packet_with_the_right_lacing(size: int) -> None:
    writer = OggPageWriter(serial=0x1234)
    packet = bytes(range(256)) * (size // 256) + bytes(size % 256)
    first, second = writer.page(packet, 0, flags=BOS), writer.page(packet, 1920)
    assert split_ogg_pages(first + second) == [first, second]
    for page, (flags, granule, sequence) in ((first, (BOS, 0, 0)), (second, (0, 1920, 1))):
        _, _, got_flags, got_granule, serial, got_sequence, crc = struct.unpack_from("<4sBBqIII", page)
        assert (got_flags, got_granule, got_sequence, serial) == (flags, granule, sequence, 0x1234)
        lacing = page[27:27 + page[26]]
        assert sum(lacing) == size and lacing[-1] < 255  # a last value under 255 ends the packet
        assert page[27 + len(lacing):] == packet
        assert crc == ogg_crc(page[:22] + b"\0\0\0\0" + page[26:])


def test_a_packet_too_big_for_one_page_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        OggPageWriter(serial=1).page(bytes(255 * 255), 0)
