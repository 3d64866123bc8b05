"""Hyperparameters of the CosyVoice3 token->waveform half (flow + HiFT).

Two sources are understood:
- the release `cosyvoice3.yaml` (hyperpyyaml). We never import hyperpyyaml: a small YAML
  loader keeps `!new:` / `!name:` / `!apply:` tags as plain data and evaluates `!ref`
  expressions against the top-level scalars, which is all the flow and hift sections use.
- the test layout's `flow_config.json` / `hift_config.json`, which hold the same tree as
  `{"class": ..., "args": {...}}` nodes.
Both are reduced to the same `{"class", "args"}` tree and then to frozen dataclasses.
"""

from __future__ import annotations

import ast
import json
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

_REF = re.compile(r"<([A-Za-z0-9_.]+)>")


@dataclass(frozen=True)
class DiTConfig:
    dim: int
    depth: int
    heads: int
    dim_head: int
    ff_mult: int
    mel_dim: int = 80
    mu_dim: int = 80
    spk_dim: int = 80
    static_chunk_size: int = 50
    num_decoding_left_chunks: int = -1


@dataclass(frozen=True)
class FlowConfig:
    dit: DiTConfig
    input_size: int = 80
    output_size: int = 80
    spk_embed_dim: int = 192
    vocab_size: int = 6561
    token_mel_ratio: int = 2
    pre_lookahead_len: int = 3
    pre_lookahead_channels: int = 1024
    inference_cfg_rate: float = 0.7
    n_timesteps: int = 10  # hard-coded in upstream flow.inference
    max_noise_frames: int = 15000  # rand_noise length: 300 s of mel at 50 Hz


@dataclass(frozen=True)
class HiftConfig:
    in_channels: int = 80
    base_channels: int = 512
    nb_harmonics: int = 8
    sampling_rate: int = 24000
    nsf_alpha: float = 0.1
    nsf_sigma: float = 0.003
    nsf_voiced_threshold: float = 10.0
    upsample_rates: tuple[int, ...] = (8, 5, 3)
    upsample_kernel_sizes: tuple[int, ...] = (16, 11, 7)
    n_fft: int = 16
    hop_len: int = 4
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5),) * 3
    source_resblock_kernel_sizes: tuple[int, ...] = (7, 7, 11)
    source_resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5),) * 3
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    conv_pre_look_right: int = 4
    f0_cond_channels: int = 512
    max_noise_samples: int = 7_200_000  # sine_waves length, fixed upstream (300 s at 24 kHz)

    @property
    def samples_per_frame(self) -> int:
        """Audio samples per mel frame (480 at 24 kHz)."""
        total = self.hop_len
        for rate in self.upsample_rates:
            total *= rate
        return total


# --------------------------------------------------------------------------- yaml


@dataclass(frozen=True)
class _Tagged:
    """A hyperpyyaml `!kind:target` node kept as data."""

    kind: str
    target: str
    value: Any


@dataclass(frozen=True)
class _Ref:
    expr: str


class _HyperYamlLoader(yaml.SafeLoader):
    pass


def _construct_tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        value: Any = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, yaml.ScalarNode)  # the composer builds only these three kinds
        value = loader.construct_scalar(node)
    if suffix == "ref":
        return _Ref(str(value))
    kind, _, target = suffix.partition(":")
    return _Tagged(kind, target, value)


_HyperYamlLoader.add_multi_constructor("!", _construct_tagged)

_ARITH: dict[type[ast.AST], Callable[..., Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.USub: operator.neg,
}


def _eval_arith(node: ast.AST) -> Any:
    if isinstance(node, ast.Expression):
        return _eval_arith(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
        return _ARITH[type(node.op)](_eval_arith(node.left), _eval_arith(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _ARITH:
        return _ARITH[type(node.op)](_eval_arith(node.operand))
    raise ValueError(f"unsupported !ref expression element: {ast.dump(node)}")


def _lookup(doc: dict[str, Any], dotted: str) -> Any:
    value: Any = doc
    for part in dotted.split("."):
        value = value[part]
    return value


def _resolve(value: Any, doc: dict[str, Any]) -> Any:
    """Replace `!ref` nodes by values and `!new:` nodes by {"class", "args"} trees."""
    if isinstance(value, _Ref):
        expr = value.expr.strip()
        whole = _REF.fullmatch(expr)
        if whole:
            return _resolve(_lookup(doc, whole.group(1)), doc)
        text = _REF.sub(lambda m: repr(_resolve(_lookup(doc, m.group(1)), doc)), expr)
        return _eval_arith(ast.parse(text, mode="eval"))
    if isinstance(value, _Tagged):
        args = _resolve(value.value, doc)
        if value.target.endswith("DictConfig") and isinstance(args, dict) and "content" in args:
            return args["content"]  # omegaconf wrapper around a plain mapping
        return {"class": value.target, "kind": value.kind, "args": args}
    if isinstance(value, dict):
        return {k: _resolve(v, doc) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, doc) for v in value]
    return value


def load_release_yaml(path: str | Path, sections: tuple[str, ...] = ("flow", "hift")) -> dict[str, Any]:
    """Read `cosyvoice3.yaml` and return the resolved trees of `sections` only."""
    doc = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_HyperYamlLoader)
    missing = [name for name in sections if not isinstance(doc, dict) or name not in doc]
    if missing:
        raise ValueError(f"{path}: expected top-level {', '.join(map(repr, missing))} entries")
    return {name: _resolve(doc[name], doc) for name in sections}


def load_json_tree(path: str | Path) -> dict[str, Any]:
    tree = json.loads(Path(path).read_text(encoding="utf-8"))
    if "args" not in tree:
        raise ValueError(f"{path}: expected a {{'class', 'args'}} tree")
    return tree


# --------------------------------------------------------------------------- trees


def _args(node: dict[str, Any], cls_suffix: str) -> dict[str, Any]:
    cls = str(node.get("class", ""))
    if not cls.endswith(cls_suffix):
        raise ValueError(f"expected a {cls_suffix} node, got {cls!r}")
    return dict(node["args"])


def flow_config_from_tree(tree: dict[str, Any]) -> FlowConfig:
    args = _args(tree, "CausalMaskedDiffWithDiT")
    pre = _args(args["pre_lookahead_layer"], "PreLookaheadLayer")
    decoder = _args(args["decoder"], "CausalConditionalCFM")
    est = _args(decoder["estimator"], "DiT")
    cfm_params = decoder.get("cfm_params", {})
    if cfm_params.get("solver", "euler") != "euler" or cfm_params.get("t_scheduler", "cosine") != "cosine":
        raise ValueError(f"only the euler solver with a cosine schedule is implemented: {cfm_params}")
    if est.get("long_skip_connection", False):
        raise ValueError("DiT long_skip_connection is not used by CosyVoice3 and not implemented")
    dit = DiTConfig(
        dim=int(est["dim"]),
        depth=int(est["depth"]),
        heads=int(est["heads"]),
        dim_head=int(est["dim_head"]),
        ff_mult=int(est.get("ff_mult", 4)),
        mel_dim=int(est.get("mel_dim", 80)),
        mu_dim=int(est.get("mu_dim") or est.get("mel_dim", 80)),
        spk_dim=int(est.get("spk_dim", 80)),
        static_chunk_size=int(est.get("static_chunk_size", 50)),
        num_decoding_left_chunks=int(est.get("num_decoding_left_chunks", -1)),
    )
    return FlowConfig(
        dit=dit,
        input_size=int(args.get("input_size", 80)),
        output_size=int(args.get("output_size", 80)),
        spk_embed_dim=int(args.get("spk_embed_dim", 192)),
        vocab_size=int(args.get("vocab_size", 6561)),
        token_mel_ratio=int(args.get("token_mel_ratio", 2)),
        pre_lookahead_len=int(args.get("pre_lookahead_len", 3)),
        pre_lookahead_channels=int(pre["channels"]),
        inference_cfg_rate=float(cfm_params.get("inference_cfg_rate", 0.7)),
    )


def _int_tuple(values: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def hift_config_from_tree(tree: dict[str, Any]) -> HiftConfig:
    args = _args(tree, "CausalHiFTGenerator")
    f0 = _args(args["f0_predictor"], "CausalConvRNNF0Predictor")
    istft = args.get("istft_params", {"n_fft": 16, "hop_len": 4})
    return HiftConfig(
        in_channels=int(args.get("in_channels", 80)),
        base_channels=int(args.get("base_channels", 512)),
        nb_harmonics=int(args.get("nb_harmonics", 8)),
        sampling_rate=int(args.get("sampling_rate", 24000)),
        nsf_alpha=float(args.get("nsf_alpha", 0.1)),
        nsf_sigma=float(args.get("nsf_sigma", 0.003)),
        nsf_voiced_threshold=float(args.get("nsf_voiced_threshold", 10)),
        upsample_rates=_int_tuple(args["upsample_rates"]),
        upsample_kernel_sizes=_int_tuple(args["upsample_kernel_sizes"]),
        n_fft=int(istft["n_fft"]),
        hop_len=int(istft["hop_len"]),
        resblock_kernel_sizes=_int_tuple(args["resblock_kernel_sizes"]),
        resblock_dilation_sizes=tuple(_int_tuple(d) for d in args["resblock_dilation_sizes"]),
        source_resblock_kernel_sizes=_int_tuple(args["source_resblock_kernel_sizes"]),
        source_resblock_dilation_sizes=tuple(_int_tuple(d) for d in args["source_resblock_dilation_sizes"]),
        lrelu_slope=float(args.get("lrelu_slope", 0.1)),
        audio_limit=float(args.get("audio_limit", 0.99)),
        conv_pre_look_right=int(args.get("conv_pre_look_right", 4)),
        f0_cond_channels=int(f0.get("cond_channels", 512)),
    )
