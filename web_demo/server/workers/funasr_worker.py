"""Fun-ASR-Nano / Fun-ASR-MLT-Nano handler (runs inside a worker subprocess).

FunAsrNanoHandler loads a release directory (config.yaml, model.pt, Qwen3-0.6B/ with the LLM
config and tokenizer) through funasr's AutoModel, fully offline: funasr treats a path that does
not exist as a hub model id and downloads it, checks PyPI for updates unless told not to, and
opens the files config.yaml names by relative paths (the LLM directory, the CTC tokenizer's
vocabulary) from the current directory; a missing LLM directory makes transformers try the
Hugging Face hub. Each of those is closed off below.

`AutoModel.generate()` keeps per-call state on the model (not thread-safe), so a worker holds
one model and serves one request at a time.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from utils.audio import MODEL_SAMPLE_RATE
from web_demo.server.devices import resolve_device
from web_demo.server.engines.base import Segment, Transcription, TranscriptionRequest
from web_demo.server.errors import BadRequest
from web_demo.server.languages import chinese_name
from web_demo.server.workers.handler import unknown_request

logger = logging.getLogger(__name__)

# The languages each release takes, as ISO codes; the prompt names them in Chinese
# (languages.chinese_name: 中文, 英文, 日文, 粤语, 韩文, ...), as upstream's README lists them.
# Fun-ASR-Nano also reads 7 Chinese dialects and 26 accents, all under 中文.
NANO_LANGUAGES = ("zh", "en", "ja")
MLT_NANO_LANGUAGES = (*NANO_LANGUAGES, "yue", "ko", "vi", "id", "th", "ms", "tl", "ar", "hi",
                      "bg", "hr", "cs", "da", "nl", "et", "fi", "el", "hu", "ga", "lv", "lt",
                      "mt", "pl", "pt", "ro", "sk", "sl", "sv")
# Shorter than one 25 ms fbank window, the frontend yields no frame and funasr fails.
MIN_SAMPLES = MODEL_SAMPLE_RATE * 25 // 1000
# A bound on the answer's length from the audio's (fast speech is ~8 characters a second), so
# a decoder stuck in a loop stops; funasr's own bound is 512 tokens whatever the length.
NEW_TOKENS_PER_SECOND = 16
MIN_NEW_TOKENS = 32


def model_languages(model_dir: Path) -> tuple[str, ...]:
    """The two releases share one config.yaml layout; only the name tells them apart."""
    return MLT_NANO_LANGUAGES if "mlt" in model_dir.name.lower() else NANO_LANGUAGES


def llm_dir(model_dir: Path, config: dict[str, Any]) -> Path:
    """The LLM directory that config.yaml names (relative to the model directory)."""
    named = Path(str((config.get("llm_conf") or {}).get("init_param_path") or "Qwen3-0.6B"))
    return named if named.is_absolute() else model_dir / named


# Other files config.yaml may name relative to the model directory (the CTC tokenizer's
# vocabulary, CMVN statistics), as key paths.
_FILE_KEYS = (("dataset_conf", "ctc_tokenizer_conf", "vocab_path"), ("ctc_tokenizer_conf", "vocab_path"),
              ("frontend_conf", "cmvn_file"))


def absolute_paths(model_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """AutoModel overrides naming config.yaml's files by absolute paths: funasr opens relative
    ones from the current directory (and looks a missing LLM directory up on the hub)."""
    llm = str(llm_dir(model_dir, config))
    overrides: dict[str, Any] = {"llm_conf": {"init_param_path": llm},
                                 "tokenizer_conf": {"init_param_path": llm}}  # the release's
    for keys in _FILE_KEYS:
        value: Any = config
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str) and not Path(value).is_absolute() and (model_dir / value).is_file():
            node = overrides
            for key in keys[:-1]:
                node = node.setdefault(key, {})
            node[keys[-1]] = str(model_dir / value)
    return overrides


def _go_offline() -> None:
    # Read by huggingface_hub when it is first imported: set before funasr imports transformers.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


class FunAsrNanoHandler:
    """TranscriptionRequest -> one Transcription with one segment spanning the audio."""

    def __init__(self, *, model_dir: str, device: str = "auto", cpu_threads: int = 1) -> None:
        self._model_dir = Path(model_dir).resolve()
        for required in ("config.yaml", "model.pt"):
            if not (self._model_dir / required).is_file():  # else funasr would try the hub
                raise FileNotFoundError(f"{self._model_dir / required} is missing: not a Fun-ASR-Nano "
                                        "directory")
        config = yaml.safe_load((self._model_dir / "config.yaml").read_text(encoding="utf-8")) or {}
        llm = llm_dir(self._model_dir, config)
        if not (llm / "config.json").is_file():
            raise FileNotFoundError(f"{llm / 'config.json'} is missing: the LLM config and "
                                    "tokenizer that config.yaml names")
        _go_offline()
        import torch
        from funasr import AutoModel  # type: ignore[import-untyped]  # no type information

        device = resolve_device(device)
        started = time.perf_counter()
        self._model = AutoModel(
            model=str(self._model_dir), device=device, disable_update=True, disable_pbar=True,
            trust_remote_code=False, ncpu=cpu_threads, **absolute_paths(self._model_dir, config),
            # The LLM decodes in bf16 on a GPU (the encoder stays fp32 in funasr); a CPU is
            # faster in fp32.
            llm_dtype="bf16" if device.startswith("cuda") else "fp32")
        # funasr quietly serves a cuda request on the CPU when CUDA is unusable: report where
        # the weights really are.
        param: torch.Tensor = next(self._model.model.parameters())
        self._device = str(param.device)
        self._languages = model_languages(self._model_dir)
        logger.info("loaded %s on %s (asked %s) in %.1f s", self._model_dir.name, self._device,
                    device, time.perf_counter() - started)

    def info(self) -> dict[str, Any]:
        return {"model": self._model_dir.name, "device": self._device,
                "languages": len(self._languages)}

    def handle(self, request: object) -> Iterator[Transcription]:
        if not isinstance(request, TranscriptionRequest):
            raise unknown_request(request)
        yield self._transcribe(request)

    def _prompt_language(self, code: str | None) -> str | None:
        """An ISO code -> the name the prompt uses (语音转写成{name}); None = no language named."""
        if code is None:
            return None
        if code not in self._languages:
            raise BadRequest(f"language {code!r} is not supported by this model (it transcribes "
                             f"{', '.join(self._languages)}, or auto)", param="language")
        return chinese_name(code)

    def _transcribe(self, request: TranscriptionRequest) -> Transcription:
        pcm_16k = np.asarray(request.pcm_16k, dtype=np.float32)
        if pcm_16k.ndim != 1:
            raise BadRequest(f"audio must be mono float32 [T], got shape {pcm_16k.shape}",
                             param="pcm_16k")
        language = self._prompt_language(request.language)
        if request.word_timestamps:
            # The released checkpoints carry no trained CTC decoder (upstream issue #106):
            # funasr's timestamps from them are not real, so none are offered.
            raise BadRequest(f"{self._model_dir.name} has no word timestamps; ask for segment "
                             "timestamps only", param="timestamp_granularities[]")
        duration_s = len(pcm_16k) / MODEL_SAMPLE_RATE
        text = self._generate(pcm_16k, request, language) if len(pcm_16k) >= MIN_SAMPLES else ""
        # One segment spanning the audio: the release's own timestamps are unreliable (above).
        segments = (Segment(start_s=0.0, end_s=duration_s, text=text),) if text else ()
        return Transcription(text=text, language=request.language, duration_s=duration_s,
                             segments=segments)

    def _generate(self, pcm_16k: np.ndarray, request: TranscriptionRequest,
                  language: str | None) -> str:
        import torch

        # A tensor, not an array: funasr's chat template only splices tensors in as audio.
        # Hotwords go as a list (a string would be joined per character). Fun-ASR's prompt
        # has no slot for free context, so request.prompt is not used.
        sampling = ({"do_sample": True, "temperature": request.temperature}
                    if request.temperature > 0 else {})
        max_new_tokens = MIN_NEW_TOKENS + math.ceil(NEW_TOKENS_PER_SECOND * len(pcm_16k)
                                                    / MODEL_SAMPLE_RATE)
        results = self._model.generate(input=torch.from_numpy(pcm_16k), hotwords=list(request.hotwords),
                                       language=language, itn=True, llm_kwargs=sampling,
                                       max_length=max_new_tokens)
        return str(results[0]["text"]).strip() if results else ""
