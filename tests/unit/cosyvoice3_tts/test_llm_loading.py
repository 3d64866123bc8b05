"""CosyVoice3LM config and weights: derived ids, real-size keys/shapes on the meta device,
the strict key check with the tied lm_head, and both directory layouts."""

from __future__ import annotations

import json
import shutil
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.tts_golden import FIXTURES, case
from utils.cosyvoice3.llm import CosyVoice3LM
from utils.cosyvoice3.llm_config import LLMConfig, llm_config_from_json, llm_config_from_release
from utils.cosyvoice3.llm_loading import (
    TEXT_EMBED_KEY,
    TIED_HEAD_KEY,
    build_llm,
    expected_llm_shapes,
    load_llm,
    load_llm_files,
)
from utils.cosyvoice3.loading import StateDictMismatch
from utils.cosyvoice3.ras_sampling import GREEDY, RasConfig

CONFIG = FIXTURES / "config"
WEIGHTS = FIXTURES / "weights" / "tiny_llm.safetensors"


@cache
def tiny_cfg() -> LLMConfig:
    return llm_config_from_json(CONFIG / "tiny_llm_config.json")


@cache
def tiny_state() -> dict[str, torch.Tensor]:
    return load_file(str(WEIGHTS))


def last_logp(lm: CosyVoice3LM) -> torch.Tensor:
    with torch.no_grad():
        return lm.step(case("llm_forward")["lm_input"])[0]


def test_config_and_derived_ids() -> None:
    cfg = tiny_cfg()
    derived = json.loads((CONFIG / "tiny_llm_config.json").read_text())["derived"]
    assert (cfg.sos, cfg.eos, cfg.task_id, cfg.fill_token) == (
        derived["sos"], derived["eos_token"], derived["task_id"], derived["fill_token"])
    assert [cfg.stop_token_ids[0], cfg.stop_token_ids[-1]] == derived["stop_token_ids"] == [6561, 6760]
    assert [cfg.speech_vocab, cfg.llm_input_size] == derived["speech_embedding"]
    defaults = derived["inference_defaults"]
    assert (cfg.min_token_text_ratio, cfg.max_token_text_ratio) == (
        defaults["min_token_text_ratio"], defaults["max_token_text_ratio"])
    assert cfg.sampler == RasConfig(top_p=0.8, top_k=25, win_size=10, tau_r=0.1)
    assert llm_config_from_json(CONFIG / "tiny_llm_greedy_config.json").sampler == GREEDY
    q = cfg.qwen2_config()
    assert (q.hidden_size, q.num_hidden_layers, q.num_attention_heads, q.num_key_value_heads) == (32, 2, 4, 2)
    assert q.tie_word_embeddings and q._attn_implementation == "sdpa"


def test_real_size_keys_and_shapes_on_meta() -> None:
    real = json.loads((FIXTURES / "real_size" / "real_llm_state_dict_shapes.json").read_text())
    shapes = expected_llm_shapes(llm_config_from_json(CONFIG / "real_llm_config.json"))
    assert len(shapes) == real["n_keys"] == 293
    assert list(shapes) == list(real["keys"])  # upstream's key order too
    assert shapes == {k: tuple(v) for k, v in real["keys"].items()}
    unique = sum(torch.Size(s).numel() for k, s in shapes.items() if k not in real["tied_keys"])
    assert unique == real["parameter_count_unique"] == 506_148_480
    assert real["tied_keys"] == {TIED_HEAD_KEY: TEXT_EMBED_KEY}


def test_golden_safetensors_loads_with_the_tied_head() -> None:
    assert TIED_HEAD_KEY not in tiny_state() and len(tiny_state()) == 28
    lm = load_llm_files(CONFIG / "tiny_llm_config.json", WEIGHTS)
    assert lm.llm.model.lm_head.weight is lm.llm.decoder.embed_tokens.weight
    assert len(lm.state_dict()) == 29
    assert all(torch.equal(lm.state_dict()[k], v) for k, v in tiny_state().items())
    assert not any(p.requires_grad for p in lm.parameters()) and not lm.training
    rope = lm.llm.decoder.rotary_emb.inv_freq
    assert rope.device.type == "cpu" and rope.dtype == torch.float32  # rebuilt after the meta build


@pytest.mark.parametrize("edit", ["missing", "unexpected", "shape", "head_differs"])
def test_strict_key_check(edit: str) -> None:
    state = dict(tiny_state())
    if edit == "missing":
        del state["llm.model.model.layers.1.mlp.up_proj.weight"]
        match = "missing.*layers.1.mlp.up_proj.weight"
    elif edit == "unexpected":
        state["llm_decoder.bias"] = torch.zeros(6761)
        match = "unexpected.*llm_decoder.bias"
    elif edit == "shape":
        state["speech_embedding.weight"] = torch.zeros(6561, 32)
        match = "shape mismatch.*speech_embedding.weight"
    else:
        state[TIED_HEAD_KEY] = state[TEXT_EMBED_KEY] + 1.0
        match = "tied"
    with pytest.raises(StateDictMismatch, match=match):
        build_llm(tiny_cfg(), state)


def _release_dir(tmp_path: Path) -> Path:
    """A release-layout directory built from the tiny golden model."""
    root = tmp_path / "release"
    (root / "CosyVoice-BlankEN").mkdir(parents=True)
    shutil.copy(CONFIG / "tiny_cosyvoice3.yaml", root / "cosyvoice3.yaml")
    shutil.copy(CONFIG / "tiny_CosyVoice-BlankEN_config.json", root / "CosyVoice-BlankEN" / "config.json")
    state = dict(tiny_state())
    state[TIED_HEAD_KEY] = state[TEXT_EMBED_KEY]  # torch.save keeps the shared storage, like llm.pt
    torch.save(state, root / "llm.pt")
    return root


def test_release_layout(tmp_path: Path) -> None:
    root = _release_dir(tmp_path)
    assert llm_config_from_release(root) == tiny_cfg()
    lm = load_llm(root)
    assert torch.equal(last_logp(lm), last_logp(load_llm_files(CONFIG / "tiny_llm_config.json", WEIGHTS)))


def test_test_layout_directory(tmp_path: Path) -> None:
    shutil.copy(CONFIG / "tiny_llm_config.json", tmp_path / "tiny_llm_config.json")
    save_file(tiny_state(), str(tmp_path / "tiny_llm.safetensors"))
    lm = load_llm(tmp_path)
    assert lm.cfg == tiny_cfg()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"llm_config.json \+ llm.safetensors"):
        load_llm(tmp_path / "empty")


def test_release_layout_without_weights(tmp_path: Path) -> None:
    root = _release_dir(tmp_path)
    (root / "llm.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"llm\.pt"):
        load_llm(root)
