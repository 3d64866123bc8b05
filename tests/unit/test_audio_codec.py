from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from utils.audio import as_mono_float32, decode_audio_file, resample, wav_bytes, write_wav_atomic
from utils.ogg import split_ogg_pages
from utils.opus import OpusStreamEncoder, decode_pages, encode_browser_pages


def tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_as_mono_float32_scales_ints_and_averages_channels() -> None:
    stereo = np.array([[16384, -16384], [32767, 32767]], dtype=np.int16)
    out = as_mono_float32(stereo)
    assert out.dtype == np.float32 and out.shape == (2,)
    assert out[0] == 0.0 and out[1] == pytest.approx(32767 / 32768)
    with pytest.raises(ValueError):
        as_mono_float32(np.zeros((2, 2, 2)))


def test_resample_keeps_duration_and_frequency() -> None:
    out = resample(tone(1.0, 24000), 24000, 16000)
    assert len(out) == 16000
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) - 440) <= 1  # 1 Hz bins over 1 s


def test_wav_round_trip_and_atomic_write(tmp_path) -> None:
    pcm = tone(0.5, 16000)
    decoded, rate = decode_audio_file(wav_bytes(pcm, 16000))
    assert rate == 16000 and np.abs(decoded - pcm).max() < 1e-3
    target = tmp_path / "sub" / "x.wav"
    write_wav_atomic(target, pcm, 16000)
    assert sf.info(target).frames == 8000 and list(target.parent.iterdir()) == [target]


def test_browser_pages_are_20ms_frames_two_per_page_and_decode() -> None:
    pcm = tone(1.0, 24000)
    pages = encode_browser_pages(pcm)
    # After OpusHead, OpusTags and a first page that may carry one more packet, every page's
    # segment table holds two lacing values: two 20 ms packets of < 255 bytes each.
    assert all(p[26] == 2 for p in pages[3:-1]) and len(pages) > 20
    decoded = decode_pages(pages)
    assert abs(len(decoded) - len(pcm)) <= 960 * 2
    # sphn does not remove the encoder's pre-skip, so align before comparing.
    err = min(np.abs(decoded[lag + 2000:lag + 20000] - pcm[2000:20000]).mean()
              for lag in range(0, 600))
    assert err < 0.03


def test_split_ogg_pages_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="no Ogg page"):
        split_ogg_pages(b"not an ogg stream at all, really")


def test_stream_encoder_flush_emits_the_partial_frame() -> None:
    encoder = OpusStreamEncoder()
    first = encoder.encode(tone(0.03, 24000))  # 720 samples: less than one 960-sample frame
    tail = encoder.flush()
    assert tail and encoder.flush() == b""
    decoded = decode_pages(split_ogg_pages(first + tail))
    assert len(decoded) >= 720


def test_stream_encoder_pages_each_frame_at_once_with_48k_granules() -> None:
    encoder = OpusStreamEncoder()
    pcm = tone(0.2, 24000)
    pages = [split_ogg_pages(encoder.encode(pcm[i:i + 960])) for i in range(0, len(pcm), 960)]
    assert [len(p) for p in pages] == [3, 1, 1, 1, 1]  # OpusHead, OpusTags, then a page a frame
    head, tags = pages[0][:2]
    assert head[28:36] == b"OpusHead" and head[5] == 0x02 and tags[28:36] == b"OpusTags"
    audio = [p for group in pages for p in group][2:]
    granules = [int.from_bytes(p[6:14], "little") for p in audio]
    assert granules == [1920 * (i + 1) for i in range(5)]
    decoded = decode_pages([head, tags, *audio])
    err = min(np.abs(decoded[lag:lag + 3000] - pcm[:3000]).mean() for lag in range(0, 400))
    assert err < 0.03
