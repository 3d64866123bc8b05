"""The two ONNX models of a CosyVoice3 release that encode the prompt audio (spec §10.4-10.5).

- `speech_tokenizer_v3.onnx`: Whisper 128-bin log-mel [1, 128, T] at 100 Hz -> 25 Hz speech
  tokens (the LLM's and the flow's prompt tokens);
- `campplus.onnx`: mean-removed 80-bin Kaldi fbank [1, T, 80] -> speaker embedding [1, 192].

Session settings are upstream's (`golden:config/frontend_config.json`): full graph
optimisation and one intra-op thread for both; the tokenizer runs on CUDA when torch sees a
GPU (and onnxruntime has the provider), campplus always on CPU. Sessions are created on
first use; `InferenceSession.run` is thread-safe, so one instance serves every request.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .loading import find_file

logger = logging.getLogger(__name__)

SPEECH_TOKENIZER_FILE = "speech_tokenizer_v3.onnx"
CAMPPLUS_FILE = "campplus.onnx"
EMBEDDING_DIM = 192


class OnnxModel:
    """One ONNX file behind a lazily created, shared onnxruntime session."""

    def __init__(self, path: str | Path, *, use_cuda: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no ONNX model at {self.path}")
        self.use_cuda = use_cuda
        self._session: Any = None  # onnxruntime.InferenceSession (ships no types)
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._session is not None

    def session(self) -> Any:
        with self._lock:
            if self._session is None:
                self._session = self._create()
            return self._session

    def _create(self) -> Any:
        import onnxruntime  # type: ignore[import-untyped]  # ships no types; imported on first use

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if self.use_cuda and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        elif self.use_cuda:
            logger.warning("%s: onnxruntime has no CUDA provider; running on CPU", self.path.name)
        session = onnxruntime.InferenceSession(str(self.path), sess_options=options, providers=providers)
        logger.info("loaded %s (%s)", self.path, session.get_providers()[0])
        return session

    def run_first_output(self, *inputs: np.ndarray) -> np.ndarray:
        """Feed inputs by position (their names are whatever the file calls them) -> output 0."""
        session = self.session()
        names = [node.name for node in session.get_inputs()]
        if len(names) != len(inputs):
            raise ValueError(f"{self.path.name} takes {len(names)} inputs, got {len(inputs)}")
        outputs = session.run(None, dict(zip(names, inputs)))
        return np.asarray(outputs[0])


class SpeechTokenizer(OnnxModel):
    """speech_tokenizer_v3.onnx: Whisper log-mel -> 25 Hz speech tokens."""

    def __call__(self, log_mel: Tensor) -> Tensor:
        """float32 [1, 128, T] (100 Hz) -> int32 [1, T'] (25 Hz; T' = ceil(T / 4) for the stand-in)."""
        if log_mel.ndim != 3 or log_mel.shape[:2] != (1, 128):
            raise ValueError(f"expected a log-mel of shape [1, 128, T], got {tuple(log_mel.shape)}")
        feats = np.ascontiguousarray(log_mel.detach().cpu().numpy(), dtype=np.float32)
        feats_length = np.array([log_mel.shape[2]], dtype=np.int32)  # [1]
        ids = self.run_first_output(feats, feats_length)  # int64 [1, T']
        return torch.from_numpy(ids.reshape(1, -1).astype(np.int32))


class SpeakerEncoder(OnnxModel):
    """campplus.onnx: mean-removed Kaldi fbank -> speaker embedding (CPU only, as upstream)."""

    def __call__(self, fbank: Tensor) -> Tensor:
        """float32 [1, T, 80] -> float32 [1, 192]."""
        if fbank.ndim != 3 or fbank.shape[0] != 1 or fbank.shape[2] != 80:
            raise ValueError(f"expected an fbank of shape [1, T, 80], got {tuple(fbank.shape)}")
        feats = np.ascontiguousarray(fbank.detach().cpu().numpy(), dtype=np.float32)
        embedding = self.run_first_output(feats).reshape(1, -1)  # [1, 192]
        if embedding.shape[1] != EMBEDDING_DIM:
            raise ValueError(f"{self.path.name} gave a {embedding.shape[1]}-d embedding, not {EMBEDDING_DIM}")
        return torch.from_numpy(embedding.astype(np.float32))


class PromptEncoders:
    """Both prompt-audio ONNX models of one model directory; owned by the TTS engine."""

    def __init__(self, speech_tokenizer: SpeechTokenizer, speaker_encoder: SpeakerEncoder) -> None:
        self.speech_tokenizer = speech_tokenizer
        self.speaker_encoder = speaker_encoder

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, *, use_cuda: bool | None = None) -> PromptEncoders:
        """Find both files (a common prefix such as `tiny_` is allowed, as in loading.py). Nothing is
        loaded yet. use_cuda None: the tokenizer follows torch.cuda.is_available(), as upstream."""
        model_dir = Path(model_dir)
        tokenizer_path = find_file(model_dir, SPEECH_TOKENIZER_FILE)
        campplus_path = find_file(model_dir, CAMPPLUS_FILE)
        missing = [name for name, path in ((SPEECH_TOKENIZER_FILE, tokenizer_path),
                                           (CAMPPLUS_FILE, campplus_path)) if path is None]
        if tokenizer_path is None or campplus_path is None:
            raise FileNotFoundError(f"{model_dir}: missing {', '.join(missing)}")
        if use_cuda is None:
            use_cuda = torch.cuda.is_available()
        return cls(SpeechTokenizer(tokenizer_path, use_cuda=use_cuda), SpeakerEncoder(campplus_path))
