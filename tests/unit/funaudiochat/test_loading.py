"""Checkpoint loading: real-size key/shape layout, tied codebook, shards and clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.fac_golden import FIXTURES, MODEL_DIR, TOKENIZER_DIR
from utils.funaudiochat import CheckpointError, FunAudioChatConfig, load_model
from utils.funaudiochat.modeling import FunAudioChatModel


def test_real_size_layout_on_meta() -> None:
    shapes = json.loads((FIXTURES / "real_size" / "real_state_dict_shapes.json").read_text())
    cfg = FunAudioChatConfig.from_json(FIXTURES / "real_size" / "real_config_reconstructed.json")
    with torch.device("meta"):
        model = FunAudioChatModel(cfg)
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert got == shapes["keys"]
    assert sum(p.numel() for p in model.parameters()) == shapes["total_unique_parameters"] == 9_424_246_784
    assert model.audio_invert_tower.lm_head.weight is model.audio_tower.embed_tokens.weight


def test_every_key_loaded_and_tied(runtime) -> None:
    state = load_file(str(MODEL_DIR / "model.safetensors"))
    model = runtime.model
    assert "audio_invert_tower.lm_head.weight" not in state
    params = dict(model.named_parameters())
    assert set(params) == set(state)  # named_parameters lists the tied tensor once
    for k, v in state.items():
        assert torch.equal(params[k], v), k
    assert model.audio_invert_tower.lm_head.weight is model.audio_tower.embed_tokens.weight


def _copy_model(tmp_path, state: dict[str, torch.Tensor] | None = None):
    dst = tmp_path / "model"
    dst.mkdir()
    shutil.copy(MODEL_DIR / "config.json", dst)
    if state is not None:
        save_file(state, str(dst / "model.safetensors"))
    return dst


def test_sharded_checkpoint_with_tied_alias_only(tmp_path) -> None:
    state = load_file(str(MODEL_DIR / "model.safetensors"))
    state["audio_invert_tower.lm_head.weight"] = state.pop("audio_tower.embed_tokens.weight")
    keys = sorted(state)
    dst = _copy_model(tmp_path)
    weight_map = {}
    for i, part in enumerate([keys[: len(keys) // 2], keys[len(keys) // 2 :]]):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: state[k] for k in part}, str(dst / name))
        weight_map.update({k: name for k in part})
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    rt = load_model(dst, tokenizer_path=TOKENIZER_DIR, device="cpu")
    codebook = rt.model.audio_tower.embed_tokens.weight
    assert torch.equal(codebook, state["audio_invert_tower.lm_head.weight"])
    assert rt.model.audio_invert_tower.lm_head.weight is codebook
    assert rt.dtype == torch.float32


def test_errors_name_the_keys(tmp_path) -> None:
    state = load_file(str(MODEL_DIR / "model.safetensors"))
    state.pop("language_model.model.norm.weight")
    state["extra.weight"] = torch.zeros(1)
    state["audio_tower.output_matching.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError) as err:
        load_model(_copy_model(tmp_path, state), device="cpu")
    msg = str(err.value)
    assert "missing keys (1): language_model.model.norm.weight" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "audio_tower.output_matching.weight: checkpoint (3, 3) vs model (16, 16)" in msg
