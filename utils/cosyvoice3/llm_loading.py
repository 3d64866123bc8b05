"""Find, check and load CosyVoice3LM weights (spec §2, §5.1).

Layouts:
- release: `cosyvoice3.yaml` + `CosyVoice-BlankEN/config.json` + `llm.pt` (torch pickle of
  the state_dict with upstream key names, 293 keys at real size). The folder's
  `model.safetensors` is never read: llm.pt overwrites every backbone weight upstream.
- test: `llm_config.json` + `llm.safetensors` (a common prefix such as `tiny_` is allowed),
  or the two files given explicitly (the goldens keep them in config/ and weights/).

`llm.model.lm_head.weight` is tied to `llm.model.model.embed_tokens.weight`. The release
stores both (equal); the golden safetensors omits the head, since safetensors cannot hold
shared storage. Either way the check below is strict: the head is filled from the
embedding when absent and must equal it when present.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor

from .llm import CosyVoice3LM, place
from .llm_config import LLMConfig, llm_config_from_json, llm_config_from_release
from .loading import Shapes, StateDictMismatch, check_state_dict, find_file, read_state_dict, state_shapes

logger = logging.getLogger(__name__)

TIED_HEAD_KEY = "llm.model.lm_head.weight"
TEXT_EMBED_KEY = "llm.model.model.embed_tokens.weight"


def expected_llm_shapes(cfg: LLMConfig) -> Shapes:
    """Checkpoint keys and shapes the model expects, built on the meta device (no memory)."""
    with torch.device("meta"):
        return state_shapes(CosyVoice3LM(cfg))


def tie_head(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Fill in or verify the tied Qwen2 lm_head (see the module docstring)."""
    if TEXT_EMBED_KEY not in state:
        return state  # reported as missing by the key check
    embed = state[TEXT_EMBED_KEY]
    head = state.get(TIED_HEAD_KEY)
    if head is None:
        return {**state, TIED_HEAD_KEY: embed}
    if head.shape != embed.shape or not torch.equal(head, embed):
        # load_state_dict would silently keep whichever of the two it copies last
        raise StateDictMismatch(f"{TIED_HEAD_KEY} differs from {TEXT_EMBED_KEY}, but the two are tied")
    return state


def build_llm(cfg: LLMConfig, state: dict[str, Tensor], *, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32, what: str = "llm") -> CosyVoice3LM:
    """Check `state` strictly against `cfg`, then build the model around its tensors."""
    state = tie_head(state)
    check_state_dict(expected_llm_shapes(cfg), state, what)
    with torch.device("meta"):
        lm = CosyVoice3LM(cfg)  # no random init of 136M text-embedding rows that get overwritten
    lm.load_state_dict(state, strict=True, assign=True)
    lm.llm.model.tie_weights()  # assign=True replaced the shared Parameter by two
    assert lm.llm.model.lm_head.weight is lm.llm.decoder.embed_tokens.weight
    return place(lm, torch.device(device), dtype)  # also rebuilds the (meta) RoPE buffer



def load_llm_files(config_path: str | Path, weights_path: str | Path, *,
                   device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> CosyVoice3LM:
    """Test layout with explicit paths: a json config tree and a safetensors/pt state_dict."""
    cfg = llm_config_from_json(config_path)
    weights = Path(weights_path)
    lm = build_llm(cfg, read_state_dict(weights), device=device, dtype=dtype, what=f"llm ({weights.name})")
    logger.info("loaded CosyVoice3LM from %s on %s/%s", weights, device, dtype)
    return lm


def load_llm(model_dir: str | Path, *, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> CosyVoice3LM:
    """Release layout (cosyvoice3.yaml + llm.pt) or test layout (llm_config.json + llm.safetensors)."""
    root = Path(model_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"model directory {root} does not exist")
    if (root / "cosyvoice3.yaml").is_file():
        weights = root / "llm.pt"
        if not weights.is_file():
            raise FileNotFoundError(f"missing weights file {weights}")
        cfg = llm_config_from_release(root)
        lm = build_llm(cfg, read_state_dict(weights), device=device, dtype=dtype, what="llm (llm.pt)")
        logger.info("loaded CosyVoice3LM (release layout) from %s on %s/%s", root, device, dtype)
        return lm
    config, state = find_file(root, "llm_config.json"), find_file(root, "llm.safetensors")
    if config is None or state is None:
        raise FileNotFoundError(f"{root}: no cosyvoice3.yaml, and no llm_config.json + llm.safetensors")
    return load_llm_files(config, state, device=device, dtype=dtype)
