#!/usr/bin/env python3
"""CPU cost of the reply stream's Opus encoder: sphn's writer beside PyAV/libopus by complexity.

Encodes a speech clip in 40 ms frames (as the chat server does) with --streams encoders
interleaved (as many sessions are) and prints microseconds of CPU per 40 ms frame, the
bitrate, and the SNR of the decoded audio against the input (best alignment; a rough
quality proxy that favours waveform-matching CELT over SILK). The S2S server's largest
cost under load (benchmarks/s2s_load.py) is this encoder.

    python benchmarks/opus_encode.py --streams 50
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import sphn

from utils.audio import WIRE_SAMPLE_RATE, read_wav, resample
from utils.ogg import split_ogg_pages
from utils.opus import OPUS_BITRATE, OPUS_COMPLEXITY, OPUS_FRAME_SAMPLES, OpusStreamEncoder, decode_pages

ROOT = Path(__file__).resolve().parent.parent


def snr_db(reference: np.ndarray, decoded: np.ndarray, max_lag: int = 800) -> float:
    """The best SNR over decoder delays up to max_lag samples."""
    best = -np.inf
    for lag in range(max_lag):
        got = decoded[lag:lag + len(reference)]
        ref = reference[:len(got)]
        best = max(best, 10 * np.log10(np.sum(ref ** 2) / max(np.sum((ref - got) ** 2), 1e-12)))
    return float(best)


def measure(make: Callable[[], Callable[[np.ndarray], bytes]], pcm: np.ndarray, streams: int) -> dict:
    encoders = [make() for _ in range(streams)]
    frames = len(pcm) // OPUS_FRAME_SAMPLES
    outputs: list[list[bytes]] = [[] for _ in range(streams)]
    started = time.process_time()
    for i in range(frames):
        frame = pcm[i * OPUS_FRAME_SAMPLES:(i + 1) * OPUS_FRAME_SAMPLES]
        for encode, out in zip(encoders, outputs, strict=True):
            out.append(encode(frame))
    cpu = time.process_time() - started
    stream = b"".join(outputs[0])
    audio_bytes = sum(len(p) for p in split_ogg_pages(stream)[2:])
    return {"us_per_frame": 1e6 * cpu / (frames * streams),
            "kbps": audio_bytes * 8 / (frames * OPUS_FRAME_SAMPLES / WIRE_SAMPLE_RATE) / 1000,
            "snr_db": snr_db(pcm, decode_pages(split_ogg_pages(stream)))}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wav", type=Path, default=ROOT / "tests/fixtures/speech/fox.wav")
    p.add_argument("--streams", type=int, default=50, help="encoders interleaved frame by frame")
    p.add_argument("--repeat", type=int, default=3, help="clip repetitions")
    a = p.parse_args(argv)
    pcm, rate = read_wav(a.wav)
    pcm = np.tile(resample(pcm, rate, WIRE_SAMPLE_RATE), a.repeat).astype(np.float32)
    rows: list[tuple[str, dict]] = [("sphn OpusStreamWriter (libopus defaults)",
                                     measure(lambda: sphn.OpusStreamWriter(WIRE_SAMPLE_RATE).append_pcm,
                                             pcm, a.streams))]
    for complexity in (10, 8, 5, 3, 1, 0):
        label = f"OpusStreamEncoder complexity {complexity}"
        label += " (default)" if complexity == OPUS_COMPLEXITY else ""
        rows.append((label, measure(lambda c=complexity: OpusStreamEncoder(complexity=c).encode,
                                    pcm, a.streams)))
    print(f"\nreply Opus encoder, {a.streams} interleaved streams, {len(pcm) / WIRE_SAMPLE_RATE:.1f} s "
          f"speech each, 40 ms frames, PyAV at {OPUS_BITRATE // 1000} kbps")
    print(f"{'encoder':<48} | {'us CPU / frame':>14} | {'vs sphn':>7} | {'kbps':>5} | {'SNR dB':>6}")
    base = rows[0][1]["us_per_frame"]
    for label, r in rows:
        print(f"{label:<48} | {r['us_per_frame']:>14.0f} | {base / r['us_per_frame']:>6.2f}x | "
              f"{r['kbps']:>5.1f} | {r['snr_db']:>6.1f}")


if __name__ == "__main__":
    main()
