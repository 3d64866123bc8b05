"""Speaking rate without a pitch change, streamed: ffmpeg's atempo filter through PyAV.

For engines that cannot change their rate themselves (CosyVoice3 synthesises at one speed);
OpenAI's `speed` range is 0.25-4, atempo takes 0.5 and up per instance, so slower rates chain
two filters.
"""

from __future__ import annotations

import av
import av.filter
import numpy as np

MIN_FACTOR = 0.5  # atempo's lower bound per filter


def atempo_factors(speed: float) -> list[float]:
    factors = []
    while speed < MIN_FACTOR:
        factors.append(MIN_FACTOR)
        speed /= MIN_FACTOR
    return [*factors, speed]


class TempoStretch:
    """float32 mono PCM in, the same at `speed` times the rate out, chunk by chunk."""

    def __init__(self, sample_rate: int, speed: float) -> None:
        self._rate = sample_rate
        self._graph = av.filter.Graph()
        node = self._graph.add_abuffer(sample_rate=sample_rate, format="flt", layout="mono")
        for factor in atempo_factors(speed):
            nxt = self._graph.add("atempo", f"{factor:.6f}")
            node.link_to(nxt)
            node = nxt
        sink = self._graph.add("abuffersink")
        node.link_to(sink)
        self._graph.configure()
        self._pts = 0

    def process(self, pcm: np.ndarray) -> np.ndarray:
        if not len(pcm):
            return np.zeros(0, np.float32)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm, np.float32)[None], format="flt",
                                           layout="mono")
        frame.sample_rate, frame.pts = self._rate, self._pts
        self._pts += len(pcm)
        self._graph.push(frame)
        return self._drain()

    def flush(self) -> np.ndarray:
        self._graph.push(None)
        return self._drain()

    def _drain(self) -> np.ndarray:
        out = []
        while True:
            try:
                out.append(self._graph.pull().to_ndarray().reshape(-1))
            except (av.BlockingIOError, av.EOFError):
                break
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)
