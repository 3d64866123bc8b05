"""CosyVoice3 speakers: a saved voice prompt (tts spec §4.5, §10).

A `Speaker` is what a prompt WAV + its transcript contribute to synthesis: the prompt
features (speech tokens, flow mel, embedding; spec §10.6 trimmed) and the LLM prompt text
ids. Building one costs two ONNX runs and three feature extractions; a saved speaker skips
them and gives the same tokens as its prompt.

Our file format is one safetensors file: tensors `speech_token` int32 [1, L],
`speech_feat` float32 [1, 2L, 80], `embedding` float32 [1, 192], `prompt_ids` int32 [P];
header metadata `format`, `prompt_text`. Upstream's `spk2info.pt` (a torch.save dict of
model_input dicts) is read too, for models that ship speakers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from .onnx_models import PromptEncoders
from .prompt_features import PromptFeatures, prompt_features, read_prompt_wav
from .text_frontend import TextFrontend

FORMAT = "cosyvoice3-speaker/1"


@dataclass(frozen=True)
class Speaker:
    """A voice prompt, read-only (one instance may serve concurrent requests).

    `features` has L = 0 tokens for an embedding-only speaker (sft: no flow prompt).
    `prompt_ids` are the zero-shot LLM prompt text ids, () when the speaker has none.
    """

    features: PromptFeatures
    prompt_ids: tuple[int, ...] = ()
    prompt_text: str | None = None  # as given; informational

    @property
    def n_prompt_tokens(self) -> int:
        return int(self.features.speech_token.shape[1])

    @property
    def has_prompt(self) -> bool:
        """Usable for zero-shot: prompt text ids and prompt speech tokens."""
        return bool(self.prompt_ids) and self.n_prompt_tokens > 0


def prompt_text_ids(frontend: TextFrontend, prompt_text: str) -> tuple[int, ...]:
    """Zero-shot prompt ids as `inference_zero_shot` makes them: text_normalize(split=False),
    a no-op once the text holds `<|endofprompt|>`. (Upstream's add_zero_shot_spk skips the
    normalisation; we normalise, so a saved speaker gives the tokens of its prompt.)"""
    return tuple(frontend.tokenizer.encode(frontend.text_normalize(prompt_text, split=False)))


def build_speaker(wave: Tensor, sample_rate: int, prompt_text: str | None, frontend: TextFrontend,
                  encoders: PromptEncoders) -> Speaker:
    """Mono float32 [1, N] (>= 16 kHz) + its transcript -> Speaker. No transcript: a speaker
    for cross-lingual / instruct2 only."""
    features = prompt_features(wave, sample_rate, encoders)
    ids = prompt_text_ids(frontend, prompt_text) if prompt_text else ()
    return Speaker(features, ids, prompt_text)


def speaker_from_wav(path: str | Path, prompt_text: str | None, frontend: TextFrontend,
                     encoders: PromptEncoders) -> Speaker:
    wave, rate = read_prompt_wav(path)
    return build_speaker(wave, rate, prompt_text, frontend, encoders)


def embedding_speaker(embedding: Tensor) -> Speaker:
    """A speaker known only by its embedding [1, 192] (sft-style spk2info entries)."""
    return Speaker(PromptFeatures(speech_token=torch.zeros(1, 0, dtype=torch.int32),
                                  speech_feat=torch.zeros(1, 0, 80),
                                  embedding=embedding.detach().float().reshape(1, -1).cpu()))


def save_speaker(path: str | Path, speaker: Speaker) -> None:
    f = speaker.features
    tensors = {
        "speech_token": f.speech_token.to(torch.int32).cpu().contiguous(),
        "speech_feat": f.speech_feat.float().cpu().contiguous(),
        "embedding": f.embedding.float().cpu().contiguous(),
        "prompt_ids": torch.tensor(speaker.prompt_ids, dtype=torch.int32),
    }
    meta = {"format": FORMAT, "prompt_text": json.dumps(speaker.prompt_text, ensure_ascii=False)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)


def load_speaker(path: str | Path) -> Speaker:
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} file (format {meta.get('format')!r})")
        t = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118  (safe_open is no dict)
    features = PromptFeatures(speech_token=t["speech_token"], speech_feat=t["speech_feat"],
                              embedding=t["embedding"])
    prompt_text = json.loads(meta.get("prompt_text", "null"))
    return Speaker(features, tuple(int(i) for i in t["prompt_ids"].tolist()), prompt_text)


# ---------------------------------------------------------------------------------------------
# upstream spk2info.pt


def speaker_from_spk2info_entry(entry: dict[str, Any]) -> Speaker:
    """One upstream model_input dict -> Speaker.

    Zero-shot entries (add_zero_shot_spk) hold `prompt_text` ids, `llm_prompt_speech_token`,
    `flow_prompt_speech_token`, `prompt_speech_feat`, `llm_embedding`/`flow_embedding`; sft
    entries hold only `embedding`. The flow's tokens and embedding are the ones kept.
    """
    embedding = entry.get("flow_embedding", entry.get("embedding"))
    if not isinstance(embedding, Tensor):
        raise ValueError(f"spk2info entry without an embedding (keys {sorted(entry)})")
    tokens = entry.get("flow_prompt_speech_token", entry.get("llm_prompt_speech_token"))
    feat = entry.get("prompt_speech_feat")
    if tokens is None or feat is None:
        return embedding_speaker(embedding)
    features = PromptFeatures(speech_token=tokens.to(torch.int32).reshape(1, -1),
                              speech_feat=feat.float().reshape(1, -1, feat.shape[-1]),
                              embedding=embedding.float().reshape(1, -1))
    text = entry.get("prompt_text")
    ids = tuple(int(i) for i in text.reshape(-1).tolist()) if isinstance(text, Tensor) else ()
    return Speaker(features, ids)


def load_spk2info(path: str | Path) -> dict[str, Speaker]:
    """Every entry of an upstream `spk2info.pt` ({spk_id: model_input dict})."""
    raw = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a dict of speakers, got {type(raw).__name__}")
    return {str(k): speaker_from_spk2info_entry(dict(v)) for k, v in raw.items()}


def spk2info_entry(speaker: Speaker) -> dict[str, Tensor]:
    """Speaker -> upstream's zero-shot model_input dict (for writing a spk2info.pt)."""
    f = speaker.features
    n_tok, n_feat, n_text = f.speech_token.shape[1], f.speech_feat.shape[1], len(speaker.prompt_ids)
    return {
        "prompt_text": torch.tensor([speaker.prompt_ids], dtype=torch.int32),
        "prompt_text_len": torch.tensor([n_text], dtype=torch.int32),
        "llm_prompt_speech_token": f.speech_token.to(torch.int32),
        "llm_prompt_speech_token_len": torch.tensor([n_tok], dtype=torch.int32),
        "flow_prompt_speech_token": f.speech_token.to(torch.int32),
        "flow_prompt_speech_token_len": torch.tensor([n_tok], dtype=torch.int32),
        "prompt_speech_feat": f.speech_feat.float(),
        "prompt_speech_feat_len": torch.tensor([n_feat], dtype=torch.int32),
        "llm_embedding": f.embedding.float(),
        "flow_embedding": f.embedding.float(),
    }
