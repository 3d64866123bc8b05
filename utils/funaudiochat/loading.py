"""Loading a checkpoint directory as downloaded into a ready ``FunAudioChatRuntime``."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor
from transformers import AutoTokenizer
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from .config import FunAudioChatConfig
from .frontend import LogMelFrontend
from .modeling import FunAudioChatModel
from .prompt import TokenIds

logger = logging.getLogger(__name__)

TIED_KEY = "audio_invert_tower.lm_head.weight"
CODEBOOK_KEY = "audio_tower.embed_tokens.weight"


class CheckpointError(ValueError):
    """The checkpoint does not fit the model built from its config."""


@dataclass
class FunAudioChatRuntime:
    """A loaded model with everything needed to turn audio into prompts and ids into text."""

    model: FunAudioChatModel
    config: FunAudioChatConfig
    tokenizer: PreTrainedTokenizerBase | None
    frontend: LogMelFrontend
    tokens: TokenIds
    device: torch.device
    dtype: torch.dtype


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _shard_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise CheckpointError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")


def read_state_dict(model_dir: Path) -> dict[str, Tensor]:
    state: dict[str, Tensor] = {}
    for path in _shard_files(model_dir):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 -- safe_open is not iterable, it only has keys()
                if key in state:
                    raise CheckpointError(f"key {key} appears in more than one shard")
                state[key] = f.get_tensor(key)
    return state


def check_state_dict(model: FunAudioChatModel, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Validate names and shapes; returns the state without the tied alias.

    Either spelling of the shared codebook is accepted; if both are present they must match.
    """
    state = dict(state)
    alias = state.pop(TIED_KEY, None)
    if alias is not None:
        if CODEBOOK_KEY in state and not torch.equal(state[CODEBOOK_KEY], alias):
            raise CheckpointError(f"{TIED_KEY} and {CODEBOOK_KEY} differ but the model ties them")
        state.setdefault(CODEBOOK_KEY, alias)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != TIED_KEY}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {expected[k]}"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched)}")
    if problems:
        raise CheckpointError("checkpoint does not match the config:\n  " + "\n  ".join(problems))
    return state


def build_model(cfg: FunAudioChatConfig, state: dict[str, Tensor], *, device: torch.device,
                dtype: torch.dtype) -> FunAudioChatModel:
    with torch.device("meta"):
        model = FunAudioChatModel(cfg)
    state = check_state_dict(model, state)
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()},
                          strict=False, assign=True)
    model.tie_weights()  # assign=True replaced the shared parameter on one side only
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:
        raise CheckpointError(f"parameters left unloaded: {leftover}")
    return model.eval().requires_grad_(False)


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase | None:
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        logger.warning("no text tokenizer in %s; prompts must be given as ids", path)
        return None
    return AutoTokenizer.from_pretrained(str(path))


def _token_ids(tokenizer: PreTrainedTokenizerBase | None) -> TokenIds:
    ids = TokenIds()
    if tokenizer is None:
        return ids
    names = {"pad": "<|endoftext|>", "im_end": "<|im_end|>", "audio": "<|AUDIO|>",
             "audio_bos": "<|audio_bos|>", "audio_eos": "<|audio_eos|>", "sil": "<|sil|>"}
    for field, token in names.items():
        got = tokenizer.convert_tokens_to_ids(token)
        if got != getattr(ids, field):
            raise CheckpointError(f"tokenizer maps {token} to {got}, expected {getattr(ids, field)}")
    return ids


def load_model(
    model_dir: str | Path,
    *,
    tokenizer_path: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> FunAudioChatRuntime:
    """Load config, weights, tokenizer and front end from a checkpoint directory.

    ``tokenizer_path`` overrides where the text tokenizer is read from (e.g. a stand-in).
    Defaults: CUDA if available, bf16 on CUDA and fp32 on CPU.
    """
    model_dir = Path(model_dir)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    dt = dtype or default_dtype(dev)
    cfg = FunAudioChatConfig.from_json(model_dir / "config.json")
    model = build_model(cfg, read_state_dict(model_dir), device=dev, dtype=dt)
    tokenizer = load_tokenizer(Path(tokenizer_path) if tokenizer_path else model_dir)
    frontend = LogMelFrontend.from_dir(model_dir, num_mel_bins=cfg.audio.num_mel_bins)
    logger.info("loaded Fun-Audio-Chat from %s on %s (%s)", model_dir, dev, dt)
    return FunAudioChatRuntime(model, cfg, tokenizer, frontend, _token_ids(tokenizer), dev, dt)
