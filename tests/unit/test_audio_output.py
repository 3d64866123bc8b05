from __future__ import annotations

import io
import itertools
import struct

import av
import numpy as np
import pytest
import soundfile as sf

from utils.ogg import split_ogg_pages
from web_demo.server.audio_output import (
    CONTENT_TYPES,
    FORMATS,
    encode_whole,
    open_encoder,
    pcm16,
    wav_header,
)
from web_demo.server.errors import BadRequest

RATE = 24_000
SECONDS = 1.5
# decoded length - input length, in seconds. mp3 streamed has no LAME tag, so decoders keep
# the encoder delay (1105 samples) and the last frame's padding; ADTS cannot say how much of
# AAC's 1024-sample priming and last frame to drop. Ogg Opus trims both (pre-skip, granule).
DURATION_SLACK_S = {"mp3": 0.12, "aac": 0.13, "opus": 0.001, "flac": 0.0, "wav": 0.0, "pcm": 0.0}
LOSSLESS = ("flac", "wav", "pcm")
DECODED_CODEC = {"mp3": "mp3float", "opus": "opus", "aac": "aac", "flac": "flac", "wav": "pcm_s16le"}


def tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def chunks(pcm: np.ndarray, rate: int) -> list[np.ndarray]:
    """0.1 s, 1 sample, 0.37 s, nothing, 1 s, then whatever is left."""
    sizes = [int(0.1 * rate), 1, int(0.37 * rate), 0, rate]
    edges = np.cumsum([0, *sizes])
    return [pcm[a:b] for a, b in itertools.pairwise(edges)] + [pcm[edges[-1]:]]


def encode_chunked(fmt: str, pcm: np.ndarray, rate: int, *, streaming: bool) -> list[bytes]:
    """Every encode() return, then finish()'s."""
    encoder = open_encoder(fmt, rate, streaming=streaming)
    return [encoder.encode(chunk) for chunk in chunks(pcm, rate)] + [encoder.finish()]


def decode(fmt: str, data: bytes, rate: int) -> tuple[str, int, np.ndarray]:
    """(decoder name, rate, samples [T]) through PyAV; pcm is read as it is specified."""
    if fmt == "pcm":
        return "pcm", rate, np.frombuffer(data, dtype="<i2")
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = [frame.to_ndarray()[0] for frame in container.decode(stream)]  # [1, n] -> [n]
        samples = np.concatenate(frames) if frames else np.zeros(0, np.int16)
        return stream.codec_context.name, stream.rate, samples


def assert_is_tone(samples: np.ndarray, rate: int) -> None:
    """440 Hz holds the spectrum of the middle second, at the input's level."""
    pcm = samples.astype(np.float32) / 32768 if samples.dtype == np.int16 else samples
    middle = pcm[len(pcm) // 2 - rate // 2:len(pcm) // 2 + rate // 2]  # 1 s: 1 Hz bins
    power = np.abs(np.fft.rfft(middle * np.hanning(len(middle)))) ** 2
    assert np.argmax(power) == pytest.approx(440, abs=1)
    assert power[430:451].sum() > 0.99 * power.sum()
    # LAME's decoded level is 0.95 of its input at every rate and bit rate (ffmpeg and mpg123
    # decode it alike), hence 10 %.
    assert np.sqrt(np.mean(middle ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)


def check_file(fmt: str, data: bytes, pcm: np.ndarray, rate: int) -> None:
    name, out_rate, samples = decode(fmt, data, rate)
    assert name == DECODED_CODEC.get(fmt, "pcm")
    assert out_rate == (48_000 if fmt == "opus" else rate)  # Opus always decodes at 48 kHz
    extra_s = len(samples) / out_rate - len(pcm) / rate
    assert -0.001 <= extra_s <= DURATION_SLACK_S[fmt] + 1e-9, extra_s
    assert_is_tone(samples, out_rate)
    if fmt in LOSSLESS:
        assert samples.dtype == np.int16 and np.array_equal(samples, pcm16(pcm))


@pytest.mark.parametrize("streaming", [True, False], ids=["streamed", "whole"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_chunked_encoding_decodes_to_the_tone(fmt: str, streaming: bool) -> None:
    pcm = tone(SECONDS, RATE)
    check_file(fmt, b"".join(encode_chunked(fmt, pcm, RATE, streaming=streaming)), pcm, RATE)


@pytest.mark.parametrize("fmt", FORMATS)
def test_streamed_bytes_leave_before_finish(fmt: str) -> None:
    pcm = tone(SECONDS, RATE)
    parts = encode_chunked(fmt, pcm, RATE, streaming=True)
    assert parts[0], "the first 0.1 s chunk already yields bytes (at least the header)"
    # Everything but the encoder's lookahead and one page/frame is out before the last chunk.
    _, out_rate, samples = decode(fmt, b"".join(parts[:-2]), RATE)
    fed_s = sum(len(chunk) for chunk in chunks(pcm, RATE)[:-1]) / RATE
    assert len(samples) / out_rate > fed_s - 0.2


@pytest.mark.parametrize("fmt", FORMATS)
def test_whole_file_equals_a_chunked_unstreamed_encoding(fmt: str) -> None:
    pcm = tone(SECONDS, RATE)
    assert encode_whole(fmt, pcm, RATE) == b"".join(encode_chunked(fmt, pcm, RATE, streaming=False))


@pytest.mark.parametrize("fmt", ["mp3", "flac"])
def test_whole_file_headers_carry_the_totals(fmt: str) -> None:
    """Seekable output: mp3's LAME tag lets decoders drop the delay and padding, FLAC's
    STREAMINFO holds the length; streamed, neither can be written back."""
    pcm = tone(SECONDS, RATE)
    for data, exact in ((encode_whole(fmt, pcm, RATE), True),
                        (b"".join(encode_chunked(fmt, pcm, RATE, streaming=True)), False)):
        with av.open(io.BytesIO(data)) as container:
            decoded = sum(frame.samples for frame in container.decode(audio=0))
            assert (container.duration == SECONDS * 1_000_000) is exact  # microseconds
        assert (decoded == len(pcm)) is (exact or fmt == "flac")


@pytest.mark.parametrize("rate", [16_000, 22_050, 44_100, 48_000])
@pytest.mark.parametrize("fmt", FORMATS)
def test_other_input_rates(fmt: str, rate: int) -> None:
    pcm = tone(SECONDS, rate)
    check_file(fmt, b"".join(encode_chunked(fmt, pcm, rate, streaming=True)), pcm, rate)


def test_wav_headers_streamed_unknown_whole_exact() -> None:
    pcm = tone(0.5, RATE)
    streamed = b"".join(encode_chunked("wav", pcm, RATE, streaming=True))
    whole = encode_whole("wav", pcm, RATE)
    data = pcm16(pcm).tobytes()
    assert streamed[44:] == whole[44:] == data
    riff, size, fmt_tag, data_tag, data_size = struct.unpack_from("<4sI4s24x4sI", streamed)
    assert (riff, fmt_tag, data_tag) == (b"RIFF", b"WAVE", b"data")
    assert size == data_size == 0xFFFFFFFF
    assert struct.unpack_from("<I", whole, 4)[0] == 36 + len(data)
    assert struct.unpack_from("<I", whole, 40)[0] == len(data)
    info = sf.info(io.BytesIO(whole))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (RATE, 1, "PCM_16", len(pcm))
    assert np.array_equal(sf.read(io.BytesIO(streamed), dtype="int16")[0], pcm16(pcm))


def test_pcm16_rounds_and_clips_like_ffmpeg() -> None:
    pcm = np.array([0.0, 1.0, -1.0, 2.0, -2.0, np.nan, 0.5, 1.5 / 32768, 2.5 / 32768, -0.6 / 32768])
    assert pcm16(pcm).tolist() == [0, 32767, -32768, 32767, -32768, 0, 16384, 2, 2, -1]
    assert pcm16(np.zeros(3, np.float32)).dtype == np.dtype("<i2")
    with pytest.raises(ValueError, match="mono"):
        pcm16(np.zeros((4, 2), np.float32))


def test_wav_header_is_44_bytes_of_mono_pcm16() -> None:
    header = wav_header(16_000, 320)
    assert len(header) == 44
    # format tag, channels, rate, byte rate, block align, bits per sample
    assert struct.unpack_from("<HHIIHH", header, 20) == (1, 1, 16_000, 32_000, 2, 16)


def test_unknown_format_is_a_bad_request_naming_the_formats() -> None:
    with pytest.raises(BadRequest) as caught:
        open_encoder("ogg", RATE, streaming=True)
    assert caught.value.param == "response_format" and all(f in caught.value.message for f in FORMATS)
    with pytest.raises(BadRequest):
        encode_whole("MP3", tone(0.1, RATE), RATE)


def test_content_types_cover_every_format() -> None:
    assert set(CONTENT_TYPES) == set(FORMATS)
    assert CONTENT_TYPES["opus"] == "audio/ogg" and CONTENT_TYPES["mp3"] == "audio/mpeg"


@pytest.mark.parametrize("streaming", [True, False], ids=["streamed", "whole"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_an_empty_stream_is_well_formed(fmt: str, streaming: bool) -> None:
    """No audio at all: wav and flac decode to 0 samples; pcm and ADTS aac are b"" (neither
    has a stream header); mp3 is an ID3 tag alone; opus the OpusHead and OpusTags pages.
    ffmpeg opens neither of the last two, as it has no audio packet to probe."""
    data = open_encoder(fmt, RATE, streaming=streaming).finish()
    if fmt in ("wav", "flac"):
        assert len(decode(fmt, data, RATE)[2]) == 0
    elif fmt == "mp3":
        assert data.startswith(b"ID3")
    elif fmt == "opus":
        assert [page[28:36] for page in split_ogg_pages(data)] == [b"OpusHead", b"OpusTags"]
    else:
        assert data == b""
