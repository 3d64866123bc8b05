"""TTS worker handlers (run inside a worker subprocess).

EspeakHandler: espeak-ng, the CPU stand-in for CosyVoice3: offline, instant, any text. Speaker
ids of CosyVoice's SFT models (中文女, 英文男, ...) and OpenAI's voice names map to espeak-ng
voices (SPEAKER_VOICES); any other name is taken as an espeak-ng voice (en-us, cmn, de+f3).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import numpy as np

from utils.audio import WIRE_SAMPLE_RATE, decode_audio_file, resample
from web_demo.server.engines.base import PcmChunk, SpeakerCreate, SpeakerList, SynthesisRequest
from web_demo.server.errors import BadRequest, EngineError
from web_demo.server.tts_protocol import OPENAI_VOICES
from web_demo.server.workers.handler import unknown_request

MAX_TEXT_CHARS = 4000
CHUNK_S = 1.0  # per result chunk: keeps pipe messages small
MIN_SPEED, MAX_SPEED = 0.25, 4.0  # the OpenAI speech API's range
MIN_WPM, MAX_WPM = 80, 450  # what espeak-ng accepts for -s
_VOICE_NAME = re.compile(r"^[A-Za-z0-9_+\-]{1,64}$")
_NO_SUCH_VOICE = "voice does not exist"  # espeak-ng's stderr for an unknown voice
# +f3 / +m3 are espeak-ng's female / male variants of a language voice
SPEAKER_VOICES = {"中文女": "cmn+f3", "中文男": "cmn+m3", "英文女": "en-us+f3", "英文男": "en-us+m3",
                  "日语男": "ja+m3", "粤语女": "yue+f3", "韩语女": "ko+f3",
                  **{name: "en-us+f3" if i % 2 else "en-us+m3" for i, name in enumerate(OPENAI_VOICES)}}


class EspeakHandler:
    """SynthesisRequest -> float32 PCM chunks at the requested rate (24 kHz by default)."""

    def __init__(self, *, voice: str = "en-us", speed_wpm: int = 160) -> None:
        binary = shutil.which("espeak-ng")
        if binary is None:
            raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
        self._binary = binary
        self._voice = check_voice(voice)
        self._wpm = speed_wpm
        self._synthesize("a", self._voice, speed_wpm)  # a bad default voice fails the start

    def info(self) -> dict[str, Any]:
        return {"model": "espeak-ng", "engine": "espeak-ng", "voice": self._voice, "device": "cpu",
                "sample_rate": WIRE_SAMPLE_RATE, "vllm_enabled": False, "stand_in": True,
                "speaker_ids": "CosyVoice's SFT ids and OpenAI's voices map to espeak-ng voices"}

    def handle(self, request: object) -> Iterator[Any]:
        if isinstance(request, SpeakerList):
            return iter([sorted(SPEAKER_VOICES)])
        if isinstance(request, SpeakerCreate):
            raise BadRequest("espeak-ng cannot clone a voice; this needs the CosyVoice3 engine",
                             param="prompt_wav")
        if not isinstance(request, SynthesisRequest):
            raise unknown_request(request)
        return self._synthesize_request(request)

    def _synthesize_request(self, request: SynthesisRequest) -> Iterator[PcmChunk]:
        text, voice, wpm = self._check(request)
        rate = request.sample_rate or WIRE_SAMPLE_RATE
        pcm = resample(self._synthesize(text, voice, wpm), WIRE_SAMPLE_RATE, rate)
        step = int(CHUNK_S * rate)
        for start in range(0, len(pcm), step):
            yield PcmChunk(pcm[start:start + step], rate)

    def _check(self, request: SynthesisRequest) -> tuple[str, str, int]:
        text = request.text.strip()
        if not text:
            raise BadRequest("text is empty", param="text")
        if len(text) > MAX_TEXT_CHARS:
            raise BadRequest(f"text is {len(text)} characters; at most {MAX_TEXT_CHARS}",
                             param="text")
        if request.prompt_audio is not None:
            raise BadRequest("espeak-ng cannot clone a voice from prompt audio",
                             param="prompt_wav")
        if not MIN_SPEED <= request.speed <= MAX_SPEED:
            raise BadRequest(f"speed must be within [{MIN_SPEED}, {MAX_SPEED}]", param="speed")
        if request.sample_rate is not None and not 8000 <= request.sample_rate <= 48000:
            raise BadRequest("sample_rate must be within [8000, 48000]", param="sample_rate")
        wpm = min(max(round(self._wpm * request.speed), MIN_WPM), MAX_WPM)
        voice = request.voice or self._voice
        return text, SPEAKER_VOICES.get(voice) or check_voice(voice), wpm

    def _synthesize(self, text: str, voice: str, wpm: int) -> np.ndarray:
        """-> float32 [T] at 24 kHz."""
        # Text goes through stdin so that nothing in it can be read as a command-line option.
        result = subprocess.run(
            [self._binary, "--stdout", "--stdin", "-v", voice, "-s", str(wpm)],
            input=text.encode("utf-8"), capture_output=True, timeout=60, check=False)
        stderr = result.stderr.decode(errors="replace")[:200]
        if _NO_SUCH_VOICE in stderr:
            raise BadRequest(f"unknown espeak-ng voice {voice!r}", param="voice")
        if result.returncode != 0 or not result.stdout:
            raise EngineError(f"espeak-ng failed: {stderr}")
        pcm, rate = decode_audio_file(result.stdout)
        return resample(pcm, rate, WIRE_SAMPLE_RATE)


def check_voice(voice: str) -> str:
    """A voice name, with an optional +variant; nothing that could reach a shell or a path."""
    if not _VOICE_NAME.match(voice):
        raise BadRequest(f"invalid voice name {voice!r}", param="voice")
    return voice
