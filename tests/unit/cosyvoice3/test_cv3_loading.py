"""Model directory layouts, weight-norm formats and the strict key check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.cv3_golden import FIXTURES, MODEL_DIR, SPEECH_ATOL, assert_close, case
from utils.cosyvoice3 import StateDictMismatch, Token2Wav
from utils.cosyvoice3.config import flow_config_from_tree, hift_config_from_tree, load_json_tree
from utils.cosyvoice3.loading import expected_shapes, find_model_files

CONFIG = FIXTURES / "config"


def test_real_size_keys_and_shapes_match_meta_model() -> None:
    flow_cfg = flow_config_from_tree(load_json_tree(CONFIG / "real_flow_config.json"))
    hift_cfg = hift_config_from_tree(load_json_tree(CONFIG / "real_hift_config.json"))
    flow, hift = expected_shapes(flow_cfg, hift_cfg)
    real = json.loads((FIXTURES / "real_size" / "real_state_dict_shapes.json").read_text())
    assert flow == {k: tuple(v) for k, v in real["flow"]["keys"].items()}
    assert hift == {k: tuple(v) for k, v in real["hift"]["keys"].items()}
    assert sum(torch.Size(s).numel() for s in flow.values()) == real["flow"]["n_state_dict_elems"]
    assert sum(torch.Size(s).numel() for s in hift.values()) == real["hift"]["n_state_dict_elems"]


def _legacy_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        key = key.replace("parametrizations.weight.original0", "weight_g")
        key = key.replace("parametrizations.weight.original1", "weight_v")
        out["generator." + key] = value
    return out


def _release_dir(tmp_path: Path, *, legacy: bool) -> Path:
    """A release-layout directory built from the tiny golden model."""
    root = tmp_path / "release"
    root.mkdir()
    shutil.copy(CONFIG / "tiny_cosyvoice3.yaml", root / "cosyvoice3.yaml")
    torch.save(load_file(str(MODEL_DIR / "flow.safetensors")), root / "flow.pt")
    hift = load_file(str(MODEL_DIR / "hift.safetensors"))
    torch.save(_legacy_weight_norm(hift) if legacy else hift, root / "hift.pt")
    embedding = case("inputs")["embedding"]
    torch.save({"中文女": {"embedding": embedding}, "other": {"embedding": -embedding}}, root / "spk2info.pt")
    return root


@pytest.mark.parametrize("legacy", [False, True], ids=["parametrizations", "weight_g_v"])
def test_release_layout_reproduces_e2e(tmp_path: Path, legacy: bool, tokens: list[int]) -> None:
    root = _release_dir(tmp_path, legacy=legacy)
    assert find_model_files(root).layout == "release"
    model = Token2Wav.from_model_dir(root, sine_samples=480 * 200)
    assert sorted(model.speakers) == ["other", "中文女"]
    # no embedding given: the default speaker from spk2info (the golden embedding)
    assert_close(model.offline(tokens), case("e2e_offline")["speech"], SPEECH_ATOL, "release e2e")


def test_test_layout_is_detected() -> None:
    files = find_model_files(MODEL_DIR)
    assert files.layout == "test" and files.spk2info is None


def _test_dir(tmp_path: Path, flow_edit=None, hift_edit=None) -> Path:
    root = tmp_path / "model"
    shutil.copytree(MODEL_DIR, root)
    for name, edit in (("flow", flow_edit), ("hift", hift_edit)):
        if edit is not None:
            state = load_file(str(root / f"{name}.safetensors"))
            edit(state)
            save_file(state, str(root / f"{name}.safetensors"))
    return root


def test_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    def edit(state):
        state["decoder.estimator.extra.weight"] = torch.zeros(1)
        del state["decoder.estimator.proj_out.bias"]

    with pytest.raises(StateDictMismatch) as err:
        Token2Wav.from_model_dir(_test_dir(tmp_path, flow_edit=edit))
    text = str(err.value)
    assert "missing (1): decoder.estimator.proj_out.bias" in text
    assert "unexpected (1): decoder.estimator.extra.weight" in text


def test_shape_mismatch_is_named(tmp_path: Path) -> None:
    def edit(state):
        state["conv_post.bias"] = torch.zeros(5)

    with pytest.raises(StateDictMismatch, match=r"conv_post.bias: checkpoint \(5,\) vs model \(18,\)"):
        Token2Wav.from_model_dir(_test_dir(tmp_path, hift_edit=edit))


def test_missing_directory_and_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Token2Wav.from_model_dir(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"flow\.safetensors"):
        find_model_files(tmp_path)


def test_fp16_refused_on_cpu() -> None:
    with pytest.raises(ValueError, match="only supported on CUDA"):
        Token2Wav.from_model_dir(MODEL_DIR, dtype=torch.float16, sine_samples=480)
