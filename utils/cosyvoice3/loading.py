"""Find, check and load CosyVoice3 flow + HiFT weights from a model directory.

Two layouts are accepted:
- release: `cosyvoice3.yaml`, `flow.pt`, `hift.pt` (torch pickles of plain state_dicts),
  optional `spk2info.pt` ({speaker id: {"embedding": [1, 192]}}). The LLM is never read.
- test: `flow_config.json`, `hift_config.json`, `flow.safetensors`, `hift.safetensors`
  (the golden-data format; a common file-name prefix such as `tiny_` is allowed).
HiFT weight norm may be stored as `weight_g`/`weight_v` or as
`parametrizations.weight.original0/original1`; keys are normalised to the latter.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from .config import (
    FlowConfig,
    HiftConfig,
    flow_config_from_tree,
    hift_config_from_tree,
    load_json_tree,
    load_release_yaml,
)
from .flow import CausalFlow
from .hift import HiftGenerator
from .noise import NoiseBuffers, build_noise

logger = logging.getLogger(__name__)

Shapes = dict[str, tuple[int, ...]]


class StateDictMismatch(ValueError):
    """A checkpoint does not fit the model built from its config."""


@dataclass(frozen=True)
class ModelFiles:
    layout: str  # "release" or "test"
    flow_config: FlowConfig
    hift_config: HiftConfig
    flow_weights: Path
    hift_weights: Path
    spk2info: Path | None


def find_file(model_dir: Path, suffix: str) -> Path | None:
    """`suffix` itself in model_dir, else the one `*_suffix` (the test layout's `tiny_` names)."""
    exact = model_dir / suffix
    if exact.is_file():
        return exact
    matches = sorted(model_dir.glob(f"*_{suffix}"))
    if len(matches) > 1:
        raise FileNotFoundError(f"{model_dir}: several files match *_{suffix}: {[m.name for m in matches]}")
    return matches[0] if matches else None


def find_model_files(model_dir: str | Path) -> ModelFiles:
    root = Path(model_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"model directory {root} does not exist")
    spk2info = root / "spk2info.pt"
    spk = spk2info if spk2info.is_file() else None
    yaml_path = root / "cosyvoice3.yaml"
    if yaml_path.is_file():
        trees = load_release_yaml(yaml_path)
        files = ModelFiles("release", flow_config_from_tree(trees["flow"]),
                           hift_config_from_tree(trees["hift"]), root / "flow.pt", root / "hift.pt", spk)
    else:
        found = {s: find_file(root, s) for s in ("flow_config.json", "hift_config.json",
                                             "flow.safetensors", "hift.safetensors")}
        missing = [s for s, p in found.items() if p is None]
        if missing:
            raise FileNotFoundError(f"{root}: no cosyvoice3.yaml, and the test layout lacks {missing}")
        paths = {s: p for s, p in found.items() if p is not None}  # all of them, as none is missing
        files = ModelFiles("test", flow_config_from_tree(load_json_tree(paths["flow_config.json"])),
                           hift_config_from_tree(load_json_tree(paths["hift_config.json"])),
                           paths["flow.safetensors"], paths["hift.safetensors"], spk)
    for path in (files.flow_weights, files.hift_weights):
        if not path.is_file():
            raise FileNotFoundError(f"missing weights file {path}")
    return files


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise StateDictMismatch(f"{path}: expected a state_dict, got {type(state).__name__}")
    return state


def normalize_hift_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip a `generator.` prefix and map legacy weight_g/weight_v to parametrization keys."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("generator.")
        if key.endswith(".weight_g"):
            key = key[: -len("weight_g")] + "parametrizations.weight.original0"
        elif key.endswith(".weight_v"):
            key = key[: -len("weight_v")] + "parametrizations.weight.original1"
        out[key] = value
    return out


def state_shapes(module: nn.Module) -> Shapes:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def check_state_dict(expected: Shapes, state: dict[str, torch.Tensor], what: str) -> None:
    """Raise StateDictMismatch naming every missing, unexpected and mis-shaped key."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {expected[k]}"
                   for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        lines = [f"{what} checkpoint does not match the model config:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)):
            if items:
                more = " ..." if len(items) > 20 else ""
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:20]) + more)
        raise StateDictMismatch("\n".join(lines))


def build_modules(flow_cfg: FlowConfig, hift_cfg: HiftConfig,
                  noise: NoiseBuffers) -> tuple[CausalFlow, HiftGenerator]:
    return CausalFlow(flow_cfg, noise.flow_noise), HiftGenerator(hift_cfg, noise.sine_noise)


def expected_shapes(flow_cfg: FlowConfig, hift_cfg: HiftConfig) -> tuple[Shapes, Shapes]:
    """Checkpoint keys and shapes the models expect, built on the meta device (no memory)."""
    with torch.device("meta"):
        noise = NoiseBuffers(torch.empty(1, flow_cfg.output_size, flow_cfg.max_noise_frames),
                             torch.empty(1, 0, hift_cfg.nb_harmonics + 1),
                             torch.empty(1, hift_cfg.nb_harmonics + 1))
        flow, hift = build_modules(flow_cfg, hift_cfg, noise)
    return state_shapes(flow), state_shapes(hift)


def place(flow: CausalFlow, hift: HiftGenerator, device: torch.device, dtype: torch.dtype) -> None:
    """Move to device/dtype, keeping the parts that need fp32 in fp32."""
    if device.type == "cpu" and dtype != torch.float32:
        raise ValueError(f"{dtype} is only supported on CUDA; use float32 on CPU")
    flow.to(device=device, dtype=dtype)
    flow.decoder.rand_noise = flow.decoder.rand_noise.float()  # ODE start noise stays exact
    rope = flow.decoder.estimator.rotary_embed
    rope.inv_freq = rope.inv_freq.float()
    hift.to(device=device, dtype=dtype)
    hift.f0_predictor.float()  # voicing (f0 > 10 Hz) is sensitive; upstream keeps it fp32
    hift.m_source.float()
    hift.window = hift.window.float()
    for module in (flow, hift):
        module.eval().requires_grad_(False)  # inference only


def load_models(model_dir: str | Path, *, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32,
                sine_samples: int | None = None) -> tuple[CausalFlow, HiftGenerator, ModelFiles]:
    """Build flow + vocoder from a model directory, load weights strictly, place them."""
    files = find_model_files(model_dir)
    flow_state = read_state_dict(files.flow_weights)
    hift_state = normalize_hift_keys(read_state_dict(files.hift_weights))
    want_flow, want_hift = expected_shapes(files.flow_config, files.hift_config)
    check_state_dict(want_flow, flow_state, f"flow ({files.flow_weights.name})")
    check_state_dict(want_hift, hift_state, f"hift ({files.hift_weights.name})")
    noise = build_noise(files.flow_config, files.hift_config, sine_samples=sine_samples)
    flow, hift = build_modules(files.flow_config, files.hift_config, noise)
    flow.load_state_dict(flow_state, strict=True)
    hift.load_state_dict(hift_state, strict=True)
    hift.fold_weight_norm()
    place(flow, hift, torch.device(device), dtype)
    logger.info("loaded CosyVoice3 token2wav (%s layout) from %s on %s/%s",
                files.layout, model_dir, device, dtype)
    return flow, hift, files


def load_spk2info(path: Path) -> dict[str, torch.Tensor]:
    """{speaker id: embedding [1, 192]} from a `spk2info.pt` file."""
    raw = torch.load(path, map_location="cpu", weights_only=True)
    return {str(k): v["embedding"].reshape(1, -1).float() for k, v in raw.items() if "embedding" in v}
