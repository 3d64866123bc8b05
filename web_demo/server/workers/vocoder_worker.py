"""Vocoder worker handler: CosyVoice3 token2wav, one stream per reply (runs in a worker).

Speech tokens (25 Hz, codes < 6561) go in as they are generated; 24 kHz PCM comes out as
soon as each hop is ready. Streams live in this process, keyed by the id the parent picks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from web_demo.server.devices import resolve_device

MAX_STREAMS = 512  # one per active reply; bounds the memory of abandoned streams
SPEECH_CODEBOOK = 6561
_DTYPES = {"float32", "float16", "bfloat16"}


class CosyVoice3Handler:
    """methods: "push" {"stream", "tokens"} -> PCM chunks; "finish" {"stream"} -> the tail;
    "close" {"stream"} -> nothing (drops the stream, e.g. on barge-in)."""

    def __init__(self, *, model_dir: str, device: str = "auto", dtype: str = "float32",
                 mode: str = "cached", speaker: str | None = None,
                 speaker_embedding: str | None = None) -> None:
        import torch

        from utils.cosyvoice3.streaming import StreamMode, Token2Wav

        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}")
        self._device = resolve_device(device)
        if self._device.startswith("cuda"):
            torch.cuda.set_device(torch.device(self._device))
        else:
            dtype = "float32"  # half precision is slower, not faster, on CPUs
        self._model = Token2Wav.from_model_dir(model_dir, device=self._device,
                                               dtype=getattr(torch, dtype))
        self._mode = StreamMode(mode)
        self._embedding = np.load(speaker_embedding) if speaker_embedding else None
        self._speaker = speaker
        self._model.speaker_embedding(self._embedding, self._speaker)  # fail at start, not mid-reply
        self._model_dir = Path(model_dir).name
        self._streams: dict[str, Any] = {}

    def info(self) -> dict[str, Any]:
        return {"model": f"cosyvoice3:{self._model_dir}", "device": self._device,
                "mode": self._mode.value, "sample_rate": self._model.sample_rate}

    def handle(self, method: str, payload: Any) -> Iterator[Any]:
        stream_id = str(payload["stream"])
        if method == "push":
            pcm = self._stream(stream_id).push(_speech_codes(payload["tokens"]))
            if len(pcm):
                yield pcm
        elif method == "finish":
            stream = self._streams.pop(stream_id, None)
            if stream is not None:
                yield stream.finalize()
        elif method == "close":
            self._streams.pop(stream_id, None)
        else:
            raise ValueError(f"unknown method {method!r}")

    def _stream(self, stream_id: str) -> Any:
        if stream_id not in self._streams:
            if len(self._streams) >= MAX_STREAMS:
                raise RuntimeError(f"too many open vocoder streams ({MAX_STREAMS})")
            self._streams[stream_id] = self._model.new_stream(
                self._mode, embedding=self._embedding, speaker=self._speaker)
        return self._streams[stream_id]


def _speech_codes(tokens: list[int]) -> list[int]:
    """Only codebook entries are audio; BOS/EOS/pad ids (>= 6561) are control tokens."""
    return [int(t) for t in tokens if 0 <= int(t) < SPEECH_CODEBOOK]
