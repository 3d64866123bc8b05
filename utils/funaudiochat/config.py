"""Fun-Audio-Chat configuration, read from a checkpoint's ``config.json``.

The top-level config holds an audio config (continuous encoder, discrete encoder and the CRQ
speech head), a Qwen3 text config and the special token ids the runtime needs. The two
transformer stacks are described with ``transformers``' ``Qwen3Config`` so its building blocks
(RMSNorm, MLP) can be reused as they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers.models.qwen3 import Qwen3Config  # transformers' lazy __init__ hides it from mypy


@dataclass(frozen=True)
class AudioConfig:
    """Widths of the audio encoders and the speech codebook (``audio_config``)."""

    num_mel_bins: int
    d_model: int
    encoder_layers: int
    encoder_attention_heads: int
    encoder_ffn_dim: int
    max_source_positions: int
    n_window: int
    output_dim: int
    codebook_size: int
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int
    group_size: int
    continuous_features_mode: str
    enable_audio_invert_tower: bool

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AudioConfig:
        mode = d.get("continuous_features_mode", "add")
        if mode not in ("add", "replace"):
            raise ValueError(f"unknown continuous_features_mode {mode!r}")
        if d.get("scale_embedding", False):
            raise ValueError("scale_embedding=True is not supported by this runtime")
        return cls(
            num_mel_bins=d["num_mel_bins"],
            d_model=d["d_model"],
            encoder_layers=d["encoder_layers"],
            encoder_attention_heads=d["encoder_attention_heads"],
            encoder_ffn_dim=d["encoder_ffn_dim"],
            max_source_positions=d["max_source_positions"],
            n_window=d["n_window"],
            output_dim=d["output_dim"],
            codebook_size=d["codebook_size"],
            bos_token_id=d["bos_token_id"],
            eos_token_id=d["eos_token_id"],
            pad_token_id=d["pad_token_id"],
            group_size=d["group_size"],
            continuous_features_mode=mode,
            enable_audio_invert_tower=d.get("enable_audio_invert_tower", True),
        )


@dataclass(frozen=True)
class FunAudioChatConfig:
    """Everything needed to build the model; ``text`` and ``crq`` are Qwen3 stacks."""

    audio: AudioConfig
    text: Qwen3Config
    crq: Qwen3Config
    audio_token_index: int
    audio_bos_index: int
    audio_eos_index: int
    sil_index: int

    @property
    def hidden_size(self) -> int:
        return self.text.hidden_size

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FunAudioChatConfig:
        if d.get("model_type") != "funaudiochat":
            raise ValueError(f"not a funaudiochat config: model_type={d.get('model_type')!r}")
        audio_d = d["audio_config"]
        text_d = d["text_config"]
        audio = AudioConfig.from_dict(audio_d)
        text = Qwen3Config(**_qwen3_fields(text_d))
        crq = Qwen3Config(**_qwen3_fields(audio_d["crq_transformer_config"]))
        if audio.output_dim != text.hidden_size:
            raise ValueError(
                f"audio output_dim {audio.output_dim} != text hidden_size {text.hidden_size}"
            )
        return cls(
            audio=audio,
            text=text,
            crq=crq,
            audio_token_index=d["audio_token_index"],
            audio_bos_index=text_d["audio_bos_index"],
            audio_eos_index=text_d["audio_eos_index"],
            sil_index=text_d["sil_index"],
        )

    @classmethod
    def from_json(cls, path: str | Path) -> FunAudioChatConfig:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


_QWEN3_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "attention_bias",
    "tie_word_embeddings",
)


def _qwen3_fields(d: dict[str, Any]) -> dict[str, Any]:
    if d.get("rope_scaling") not in (None, {}):
        raise ValueError(f"rope_scaling {d['rope_scaling']!r} is not supported")
    if d.get("attention_bias", False):
        raise ValueError("attention_bias=True is not supported")
    return {k: d[k] for k in _QWEN3_KEYS if k in d}
