"""Hyperparameters of CosyVoice3's speech-token LLM (spec cosyvoice3-tts.md §3, §5.2).

Two sources give the same `LLMConfig`:
- release: the `llm` section of `cosyvoice3.yaml` (CosyVoice3LM args + the ras_sampling
  partial) and `CosyVoice-BlankEN/config.json` (the Qwen2 shape; upstream builds the
  backbone with `from_pretrained` on that folder, and llm.pt then overwrites every weight).
- test: one json tree `{"class", "args": {..., "llm": {"wraps": {"config": {...}}},
  "sampling": {"args": {...}}}}` (the goldens' `config/tiny_llm_config.json`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers.models.qwen2 import Qwen2Config  # transformers' lazy __init__ hides it from mypy

# the yaml reader of the token2wav half (keeps hyperpyyaml tags as data, resolves !ref)
from .config import load_release_yaml
from .ras_sampling import RasConfig

# Qwen2Config fields that decide the math or the parameter shapes; everything else in a
# HF config.json (generation defaults, label maps, ...) is irrelevant to the backbone.
_QWEN2_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta",
    "rope_scaling", "tie_word_embeddings", "use_sliding_window", "sliding_window",
    "max_window_layers", "attention_dropout", "bos_token_id", "eos_token_id",
)
EXTRA_SPEECH_IDS = 200  # sos, eos, task_id, fill and 196 unused rows after the 6561 speech tokens


@dataclass(frozen=True)
class LLMConfig:
    """CosyVoice3LM: Qwen2 backbone + speech embedding/head of speech_token_size + 200 rows."""

    qwen2: Mapping[str, Any]  # the _QWEN2_FIELDS present in the source
    llm_input_size: int = 896
    llm_output_size: int = 896
    speech_token_size: int = 6561
    sampler: RasConfig = field(default_factory=RasConfig)
    # inference-call defaults of CosyVoice3LM.inference (min_len/max_len per tts text id)
    min_token_text_ratio: float = 2.0
    max_token_text_ratio: float = 20.0

    def __post_init__(self) -> None:
        hidden = int(self.qwen2["hidden_size"])
        if not self.llm_input_size == self.llm_output_size == hidden:
            raise ValueError(f"llm_input_size {self.llm_input_size} / llm_output_size "
                             f"{self.llm_output_size} must equal the Qwen2 hidden_size {hidden}")

    # ids on the speech side (§5.2): all live in speech_embedding / llm_decoder
    @property
    def sos(self) -> int:
        return self.speech_token_size

    @property
    def eos(self) -> int:
        return self.speech_token_size + 1

    @property
    def task_id(self) -> int:
        return self.speech_token_size + 2

    @property
    def fill_token(self) -> int:
        return self.speech_token_size + 3  # bistream only

    @property
    def speech_vocab(self) -> int:
        return self.speech_token_size + EXTRA_SPEECH_IDS

    @property
    def stop_token_ids(self) -> range:
        return range(self.speech_token_size, self.speech_vocab)  # any of them ends decoding

    def qwen2_config(self) -> Qwen2Config:
        # sdpa: what upstream's transformers picks by default on CPU and GPU
        return Qwen2Config(**dict(self.qwen2), attn_implementation="sdpa")


def _qwen2_fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    if raw.get("model_type", "qwen2") != "qwen2":
        raise ValueError(f"expected a qwen2 config, got model_type {raw.get('model_type')!r}")
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers") if k not in raw]
    if missing:
        raise ValueError(f"Qwen2 config lacks {missing}")
    return {k: raw[k] for k in _QWEN2_FIELDS if k in raw}


def _from_tree(args: Mapping[str, Any], qwen2: Mapping[str, Any]) -> LLMConfig:
    sampling = args.get("sampling") or {}
    target = str(sampling.get("class") or sampling.get("function") or "ras_sampling")
    if "ras_sampling" not in target:
        raise ValueError(f"only ras_sampling is implemented, the config names {target!r}")
    s = dict(sampling.get("args") or {})
    sampler = RasConfig(top_p=float(s.get("top_p", 0.8)), top_k=int(s.get("top_k", 25)),
                        win_size=int(s.get("win_size", 10)), tau_r=float(s.get("tau_r", 0.1)))
    return LLMConfig(
        qwen2=_qwen2_fields(qwen2),
        llm_input_size=int(args["llm_input_size"]),
        llm_output_size=int(args["llm_output_size"]),
        speech_token_size=int(args.get("speech_token_size", 6561)),
        sampler=sampler,
    )


def _check_class(tree: Mapping[str, Any], where: object) -> Mapping[str, Any]:
    cls = str(tree.get("class", ""))
    if not cls.endswith("CosyVoice3LM"):
        raise ValueError(f"{where}: expected a CosyVoice3LM node, got {cls!r}")
    return dict(tree["args"])


def llm_config_from_json(path: str | Path) -> LLMConfig:
    """The test layout: one json tree with the Qwen2 config under llm.wraps.config."""
    tree = json.loads(Path(path).read_text(encoding="utf-8"))
    args = _check_class(tree, path)
    return _from_tree(args, args["llm"]["wraps"]["config"])


def llm_config_from_release(model_dir: str | Path) -> LLMConfig:
    """The release layout: `cosyvoice3.yaml` llm section + `CosyVoice-BlankEN/config.json`."""
    root = Path(model_dir)
    llm = load_release_yaml(root / "cosyvoice3.yaml", sections=("llm",))["llm"]
    args = _check_class(llm, root / "cosyvoice3.yaml")
    qwen2 = json.loads((root / "CosyVoice-BlankEN" / "config.json").read_text(encoding="utf-8"))
    return _from_tree(args, qwen2)
