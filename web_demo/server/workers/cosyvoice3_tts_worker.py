"""CosyVoice3 text-to-speech worker handler (runs in a worker subprocess).

One `CosyVoice3Tts` per process; its LLM half runs in a `TTSScheduler` thread that decodes
every active request in one batched step, so the handler serves `max_concurrent` requests at
once (process.py runs each in its own thread). Per request: text -> sentences -> speech
tokens (batched) -> cached token2wav -> PCM chunks, the first as soon as its hop is vocoded.

Which voice and mode (spec §4.5), from the request:
- `instructions` -> instruct2 (style from the instruction, timbre from the speaker);
- prompt audio with its text -> zero_shot; prompt audio alone -> cross_lingual;
- a speaker id: a saved speaker of `speakers_dir`, or one shipped in spk2info.pt; zero_shot
  when it has a prompt, else sft (embedding only).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.audio import resample
from utils.cosyvoice3.speakers import Speaker, load_speaker, save_speaker
from utils.cosyvoice3.synthesizer import CosyVoice3Tts, sentences
from utils.cosyvoice3.text_inputs import Mode, with_system_prompt
from utils.cosyvoice3.tts_scheduler import TTSScheduler
from utils.cosyvoice3.vllm_export import EXPORT_DIR, export_for_vllm
from utils.cosyvoice3.vllm_llm import VllmTokenSource
from web_demo.server.devices import resolve_device
from web_demo.server.engines.base import PcmChunk, SpeakerCreate, SpeakerList, SynthesisRequest
from web_demo.server.errors import BadRequest, NotFound
from web_demo.server.tempo import TempoStretch
from web_demo.server.tts_protocol import MAX_SPEED, MIN_SPEED, OPENAI_VOICES
from web_demo.server.workers.handler import unknown_request

logger = logging.getLogger(__name__)

MAX_TEXT_CHARS = 4000
SPEAKER_SUFFIX = ".safetensors"
_SPEAKER_NAME = re.compile(r"^[\w-]{1,64}$")  # letters of any script, digits, _ and -: no paths
_DTYPES = {"float32", "float16", "bfloat16"}


def check_speaker_name(name: str) -> str:
    if not _SPEAKER_NAME.match(name):
        raise BadRequest(f"invalid speaker name {name[:80]!r}: 1-64 letters, digits, _ or -",
                         param="name")
    return name


class CosyVoice3TtsHandler:
    """SynthesisRequest -> PcmChunks; SpeakerCreate / SpeakerList manage the saved speakers."""

    def __init__(self, *, model_dir: str, device: str = "auto", dtype: str = "float32",
                 speakers_dir: str | None = None, default_speaker: str | None = None,
                 max_batch: int = 16, max_concurrent: int = 16, use_vllm: bool = False) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}")
        self._device = resolve_device(device)
        if self._device.startswith("cuda"):
            torch.cuda.set_device(torch.device(self._device))
        else:
            dtype = "float32"  # bf16/fp16 are CUDA-only paths of the runtime
        self._tts = CosyVoice3Tts.from_model_dir(model_dir, device=self._device, dtype=getattr(torch, dtype))
        self._vllm = use_vllm
        self._max_batch = max_batch
        if use_vllm:
            self._tokens: TTSScheduler | VllmTokenSource = _vllm_source(self._tts, Path(model_dir), dtype)
        else:
            self._tokens = TTSScheduler(self._tts.lm, max_batch=max_batch)
            self._tokens.start()
        self._tts.scheduler = self._tokens
        self.max_concurrent = max_concurrent
        self._speakers_dir = Path(speakers_dir) if speakers_dir else None
        self._saved: dict[str, Speaker] = {}  # read from speakers_dir on first use
        self._lock = threading.Lock()  # guards _saved (requests run in several threads)
        self._model = Path(model_dir).name
        self._default = self._default_speaker(default_speaker)

    def info(self) -> dict[str, Any]:
        return {"model": self._model, "engine": "cosyvoice3", "device": self._device,
                "sample_rate": self._tts.sample_rate, "max_batch": self._max_batch,
                "default_speaker": self._default, "speakers": len(self.speaker_ids()),
                "vllm_enabled": self._vllm, "stand_in": False}

    def shutdown(self) -> None:
        self._tokens.stop()  # ends every token stream, so waiting requests return

    def handle(self, request: object) -> Iterator[Any]:
        if isinstance(request, SynthesisRequest):
            return self._synthesize(request)
        if isinstance(request, SpeakerCreate):
            return iter([self._create_speaker(request)])
        if isinstance(request, SpeakerList):
            return iter([self.speaker_ids()])
        raise unknown_request(request)

    # ------------------------------------------------------------------ synthesis

    def _synthesize(self, request: SynthesisRequest) -> Iterator[PcmChunk]:
        text = _check_text(request)
        if not MIN_SPEED <= request.speed <= MAX_SPEED:
            raise BadRequest(f"speed must be within [{MIN_SPEED}, {MAX_SPEED}]", param="speed")
        mode, speaker = self._voice(request)
        rate = request.sample_rate or self._tts.sample_rate
        # CosyVoice3 speaks at one rate: other speeds are a pitch-preserving time stretch
        tempo = TempoStretch(self._tts.sample_rate, request.speed) if request.speed != 1.0 else None
        pieces = list(sentences([text])) if mode is Mode.CROSS_LINGUAL else [text]
        spoken = False
        for piece in pieces:
            piece, _, instruct = with_system_prompt(mode, piece, None, request.instructions)
            # Each next() waits for this request's tokens (batched in the scheduler thread) and
            # vocodes them in this request's thread; token2wav keeps its state in the stream.
            for pcm in self._tts.stream(piece, mode, speaker, instruct=instruct, seed=request.seed):
                spoken = True
                if tempo is not None:
                    pcm = tempo.process(pcm)
                if len(pcm):
                    yield PcmChunk(resample(pcm, self._tts.sample_rate, rate), rate)
        if tempo is not None and len(tail := tempo.flush()):
            yield PcmChunk(resample(tail, self._tts.sample_rate, rate), rate)
        if not spoken:  # only punctuation or symbols: the front end left nothing to say
            raise BadRequest("the text has nothing to speak (no words after normalisation)", param="text")

    def _voice(self, request: SynthesisRequest) -> tuple[Mode, Speaker]:
        if request.prompt_audio is not None:
            speaker = self._speaker_from_audio(request.prompt_audio, request.prompt_text)
            mode = Mode.ZERO_SHOT if request.prompt_text else Mode.CROSS_LINGUAL
        else:
            speaker = self.speaker(request.voice or self._default)
            mode = Mode.ZERO_SHOT if speaker.has_prompt else Mode.SFT
        if request.instructions:
            mode = Mode.INSTRUCT2
        return mode, speaker

    def _speaker_from_audio(self, audio: PcmChunk, prompt_text: str | None) -> Speaker:
        wave = torch.from_numpy(np.ascontiguousarray(audio.pcm, dtype=np.float32))[None]
        try:
            return self._tts.make_speaker((wave, audio.sample_rate), prompt_text)
        except ValueError as exc:  # too short, too low a rate
            raise BadRequest(f"unusable prompt audio: {exc}", param="prompt_wav") from exc

    # ------------------------------------------------------------------ speakers

    def speaker(self, name: str | None) -> Speaker:
        if name is None:
            raise BadRequest("no speaker given and the server has no default speaker; pass "
                             "speaker_id (GET /api/speakers lists them) or a prompt", param="speaker_id")
        if name in self._tts.speakers:
            return self._tts.speakers[name]
        if name in OPENAI_VOICES and self._default and name not in self.speaker_ids():
            return self.speaker(self._default)  # an OpenAI client's stock voice: our default
        with self._lock:
            if name not in self._saved:
                self._saved[name] = self._load_saved(name)
            return self._saved[name]

    def _default_speaker(self, name: str | None) -> str | None:
        """A speaker id, or (from the command line only, never from a request) the path of a
        saved speaker file, loaded now under its file name."""
        if name is None or not name.endswith(SPEAKER_SUFFIX) or not Path(name).is_file():
            return name
        key = Path(name).name[:-len(SPEAKER_SUFFIX)]
        self._saved[key] = load_speaker(name)
        return key

    def _load_saved(self, name: str) -> Speaker:
        path = self._speaker_path(name) if _SPEAKER_NAME.match(name) else None
        if path is None or not path.is_file():
            raise NotFound(f"unknown speaker {name[:80]!r}; known: {self.speaker_ids()[:20]}",
                           param="speaker_id")
        return load_speaker(path)

    def speaker_ids(self) -> list[str]:
        saved = ([p.name[:-len(SPEAKER_SUFFIX)] for p in self._speakers_dir.glob(f"*{SPEAKER_SUFFIX}")]
                 if self._speakers_dir is not None and self._speakers_dir.is_dir() else [])
        return sorted({*self._tts.speakers, *saved})

    def _speaker_path(self, name: str) -> Path | None:
        return None if self._speakers_dir is None else self._speakers_dir / f"{name}{SPEAKER_SUFFIX}"

    def _create_speaker(self, request: SpeakerCreate) -> str:
        name = check_speaker_name(request.name)
        path = self._speaker_path(name)
        if path is None:
            raise BadRequest("this server saves no speakers (start it with --speakers-dir)", param="name")
        if name in self._tts.speakers:
            raise BadRequest(f"speaker {name!r} ships with the model; choose another name", param="name")
        speaker = self._speaker_from_audio(request.prompt_audio, request.prompt_text)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_speaker(tmp, speaker)
            os.replace(tmp, path)  # atomic: a reader sees the old file or the new one
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        with self._lock:
            self._saved[name] = speaker
        logger.info("saved speaker %r (%d prompt tokens)", name, speaker.n_prompt_tokens)
        return name


def _vllm_source(tts: CosyVoice3Tts, model_dir: Path, dtype: str) -> VllmTokenSource:
    """The LLM exported next to the model (model_dir/vllm, once) and served by vLLM; the torch
    copy of the Qwen2 layers is then only a reference, as upstream keeps its text embedding."""
    exported = export_for_vllm(tts.lm, model_dir / EXPORT_DIR, source=str(model_dir.resolve()))
    return VllmTokenSource(exported, tts.lm.cfg, dtype="bfloat16" if dtype == "float32" else dtype)


def _check_text(request: SynthesisRequest) -> str:
    text = request.text.strip()
    if not text:
        raise BadRequest("text is empty", param="text")
    if len(text) > MAX_TEXT_CHARS:
        raise BadRequest(f"text is {len(text)} characters; at most {MAX_TEXT_CHARS}", param="text")
    return text
