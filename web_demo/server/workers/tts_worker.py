"""TTS worker handlers (run inside a worker subprocess).

EspeakHandler: espeak-ng, the CPU stand-in for CosyVoice3: offline, instant, any text.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

from utils.audio import WIRE_SAMPLE_RATE, decode_audio_file, resample

MAX_TEXT_CHARS = 4000
CHUNK_SAMPLES_24K = 24_000  # 1 s per result chunk keeps pipe messages small
_VOICE_NAME = re.compile(r"^[A-Za-z0-9_+\-]{1,64}$")


class EspeakHandler:
    """method "synthesize": {"text": str, "voice": str | None} -> float32 PCM 24 kHz chunks."""

    def __init__(self, *, voice: str = "en-us", speed_wpm: int = 160) -> None:
        self._binary = shutil.which("espeak-ng")
        if self._binary is None:
            raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
        self._voice = check_voice(voice)
        self._speed = speed_wpm

    def info(self) -> dict[str, Any]:
        return {"model": "espeak-ng", "voice": self._voice, "device": "cpu",
                "sample_rate": WIRE_SAMPLE_RATE}

    def handle(self, method: str, payload: Any) -> Iterator[Any]:
        if method != "synthesize":
            raise ValueError(f"unknown method {method!r}")
        text = str(payload["text"])[:MAX_TEXT_CHARS]
        voice = check_voice(payload.get("voice") or self._voice)
        pcm_24k = self._synthesize(text, voice)
        for start in range(0, len(pcm_24k), CHUNK_SAMPLES_24K):
            yield pcm_24k[start:start + CHUNK_SAMPLES_24K]

    def _synthesize(self, text: str, voice: str) -> Any:
        # Text goes through stdin so that nothing in it can be read as a command-line option.
        result = subprocess.run(
            [self._binary, "--stdout", "--stdin", "-v", voice, "-s", str(self._speed)],
            input=text.encode("utf-8"), capture_output=True, timeout=60, check=False)
        if result.returncode != 0 or not result.stdout:
            raise RuntimeError(f"espeak-ng failed: {result.stderr.decode(errors='replace')[:200]}")
        pcm, rate = decode_audio_file(result.stdout)
        return resample(pcm, rate, WIRE_SAMPLE_RATE)


def check_voice(voice: str) -> str:
    if not _VOICE_NAME.match(voice):
        raise ValueError(f"invalid voice name {voice!r}")
    return voice
