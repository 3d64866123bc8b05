"""Uploaded audio files -> float32 mono PCM at 16 kHz, within documented limits.

Formats: wav, flac, ogg (Vorbis, Opus), mp3 through libsndfile (soundfile) first; webm/mkv,
m4a/mp4, aac, and whatever libsndfile refuses, through PyAV. PyAV is told the container
named by the file's magic bytes and never guesses one itself: some ffmpeg demuxers (HLS
playlists, concat lists) would open other files or URLs named inside an upload. The upload
stays in memory; nothing is written to disk. Every failure is a BadRequest (400) or a
PayloadTooLarge (413) naming the form field (`param`).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf

from utils.audio import MODEL_SAMPLE_RATE, as_mono_float32, resample
from web_demo.server.errors import BadRequest, PayloadTooLarge

logger = logging.getLogger(__name__)

FORMATS = "wav, flac, ogg/opus, mp3, webm, m4a, aac"
MAX_SOURCE_RATE = 384_000  # above any real recording; guards the resampler


@dataclass(frozen=True)
class AudioLimits:
    """What one upload may be. Defaults follow OpenAI's 25 MB upload limit and vLLM's 600 s."""
    max_bytes: int = 25 * 1024 * 1024
    max_seconds: float = 600.0

    def __post_init__(self) -> None:
        if self.max_bytes < 1024 or self.max_seconds <= 0:
            raise ValueError(f"audio limits too small: {self}")


@dataclass(frozen=True)
class DecodedAudio:
    pcm_16k: np.ndarray = field(repr=False)  # float32 [T], in [-1, 1]
    source_rate: int
    container: str  # "wav", "mp3", ... as recognised (or "soundfile" when libsndfile sniffed it)

    @property
    def duration_s(self) -> float:
        return len(self.pcm_16k) / MODEL_SAMPLE_RATE


def sniff_container(data: bytes) -> str | None:
    """The ffmpeg demuxer for an allowed container, from its first bytes; None when unknown."""
    head = data[:12]
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"  # webm is matroska
    if head[4:8] == b"ftyp":
        return "mp4"  # m4a, mp4, 3gp
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:
        return "aac"  # ADTS: 12 sync bits, layer 0
    if head[:3] == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    return None


def decode_upload(data: bytes, *, limits: AudioLimits = AudioLimits(), param: str = "file") -> DecodedAudio:
    """File bytes -> 16 kHz mono float32; blocking (run it in a thread)."""
    pcm, rate, container = decode_native(data, limits=limits, param=param)
    return DecodedAudio(pcm_16k=resample(pcm, rate, MODEL_SAMPLE_RATE), source_rate=rate,
                        container=container)


def decode_native(data: bytes, *, limits: AudioLimits = AudioLimits(),
                  param: str = "file") -> tuple[np.ndarray, int, str]:
    """File bytes -> (mono float32 in [-1, 1] at the file's own rate, that rate, container),
    for models that read more than 16 kHz (a CosyVoice3 voice prompt); blocking."""
    if not data:
        raise BadRequest("the audio file is empty", param=param)
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"the audio file is {len(data)} bytes; the limit is {limits.max_bytes}",
                              param=param)
    container = sniff_container(data)
    try:
        pcm, rate = _decode_soundfile(data, limits, param)
        container = container or "soundfile"
    except _Undecodable as sf_error:
        if container is None:
            raise BadRequest(f"could not decode audio: not a recognised format ({FORMATS})",
                             param=param) from sf_error
        pcm, rate = _decode_pyav(data, container, limits, param)
    if pcm.size == 0:
        raise BadRequest("could not decode audio: the file holds no samples", param=param)
    pcm = np.clip(np.nan_to_num(pcm, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
    return pcm, rate, container


def decode_raw_pcm16(data: bytes, rate: int, *, limits: AudioLimits = AudioLimits(),
                     param: str = "body") -> DecodedAudio:
    """Headerless 16-bit little-endian mono PCM at `rate` -> 16 kHz mono float32."""
    if not data:
        raise BadRequest("the audio is empty", param=param)
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"the audio is {len(data)} bytes; the limit is {limits.max_bytes}",
                              param=param)
    if len(data) % 2:
        raise BadRequest("16-bit PCM has an even number of bytes", param=param)
    _check_rate(rate, param)
    seconds = len(data) / 2 / rate
    if seconds > limits.max_seconds:
        raise _too_long(seconds, limits, param)
    pcm = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    return DecodedAudio(pcm_16k=resample(pcm, rate, MODEL_SAMPLE_RATE), source_rate=rate,
                        container="pcm")


class _Undecodable(Exception):
    """libsndfile could not read the file; PyAV may."""


def _check_rate(rate: int, param: str) -> None:
    if not 0 < rate <= MAX_SOURCE_RATE:
        raise BadRequest(f"could not decode audio: sample rate {rate} Hz is out of range", param=param)


def _too_long(seconds: float | None, limits: AudioLimits, param: str) -> PayloadTooLarge:
    """`seconds` None: decoding stopped at the limit, the true length is unknown."""
    length = f"{seconds:.1f} s long" if seconds is not None else "longer than that"
    return PayloadTooLarge(f"the audio is {length}; the limit is {limits.max_seconds:g} s", param=param)


def _decode_soundfile(data: bytes, limits: AudioLimits, param: str) -> tuple[np.ndarray, int]:
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate = int(f.samplerate)
            _check_rate(rate, param)
            if f.frames / rate > limits.max_seconds:
                raise _too_long(f.frames / rate, limits, param)
            # Never more than the limit allows, whatever the header claims.
            pcm = f.read(frames=int(limits.max_seconds * rate) + 1, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, EOFError) as exc:
        raise _Undecodable(str(exc)) from exc
    if len(pcm) / rate > limits.max_seconds:
        raise _too_long(None, limits, param)
    return as_mono_float32(pcm), rate  # pcm: float32 [T, C] -> [T]


def _decode_pyav(data: bytes, container: str, limits: AudioLimits, param: str) -> tuple[np.ndarray, int]:
    import av

    chunks: list[np.ndarray] = []  # float32 [t] each
    rate = 0
    try:
        with av.open(io.BytesIO(data), mode="r", format=container) as media:
            if not media.streams.audio:
                raise BadRequest(f"could not decode audio: the {container} file has no audio stream",
                                 param=param)
            stream = media.streams.audio[0]
            resampler = None
            total = 0
            for frame in media.decode(stream):
                if resampler is None:
                    rate = int(frame.sample_rate)
                    _check_rate(rate, param)
                    # Mixes to mono float at the source rate; soxr resamples afterwards.
                    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)  # packed mono: [1, t] -> [t]
                    chunks.append(chunk)
                    total += len(chunk)
                if total / rate > limits.max_seconds:
                    raise _too_long(None, limits, param)
            if resampler is not None:
                chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    except av.FFmpegError as exc:
        logger.debug("PyAV could not decode a %s upload: %s", container, exc)
        raise BadRequest(f"could not decode audio: the {container} data is invalid or truncated",
                         param=param) from exc
    if not chunks:
        raise BadRequest("could not decode audio: the file holds no samples", param=param)
    return np.concatenate(chunks).astype(np.float32, copy=False), rate
