"""Config parsing (release yaml and test json) and the fixed-noise recipe."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.cv3_golden import FIXTURES, manifest
from utils.cosyvoice3.config import (
    flow_config_from_tree,
    hift_config_from_tree,
    load_json_tree,
    load_release_yaml,
)
from utils.cosyvoice3.noise import build_noise

CONFIG = FIXTURES / "config"


def _configs(prefix: str):
    return (flow_config_from_tree(load_json_tree(CONFIG / f"{prefix}_flow_config.json")),
            hift_config_from_tree(load_json_tree(CONFIG / f"{prefix}_hift_config.json")))


def _sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().astype("<f4").tobytes()).hexdigest()


def test_release_yaml_matches_json_configs() -> None:
    trees = load_release_yaml(CONFIG / "tiny_cosyvoice3.yaml")
    flow, hift = _configs("tiny")
    assert flow_config_from_tree(trees["flow"]) == flow
    assert hift_config_from_tree(trees["hift"]) == hift
    # `!ref <chunk_size> * <token_mel_ratio>` is evaluated, not copied as text
    assert flow.dit.static_chunk_size == 50


def test_yaml_loader_ignores_unrelated_hyperpyyaml_entries(tmp_path) -> None:
    text = (CONFIG / "tiny_cosyvoice3.yaml").read_text()
    extra = ("__set_seed1: !apply:random.seed [1986]\n"
             "get_tokenizer: !name:cosyvoice.tokenizer.get_qwen_tokenizer\n"
             "    token_path: !ref <qwen_pretrain_path>\n"
             "qwen_pretrain_path: ''\n"
             "llm: !new:cosyvoice.llm.llm.CosyVoice3LM\n    speech_token_size: 6561\n")
    path = tmp_path / "cosyvoice3.yaml"
    path.write_text(extra + text)
    trees = load_release_yaml(path)
    assert flow_config_from_tree(trees["flow"]) == _configs("tiny")[0]


def test_real_configs() -> None:
    flow, hift = _configs("real")
    assert (flow.dit.dim, flow.dit.depth, flow.dit.heads, flow.dit.dim_head) == (1024, 22, 16, 64)
    assert flow.pre_lookahead_channels == 1024 and hift.base_channels == 512 and hift.f0_cond_channels == 512
    assert hift.samples_per_frame == 480


def test_tiny_noise_matches_saved_prefixes() -> None:
    saved = load_file(str(FIXTURES / "noise" / "noise_buffers.safetensors"))
    noise = build_noise(*_configs("tiny"), sine_samples=saved["hift_sine_noise_prefix"].shape[1])
    assert torch.equal(noise.flow_noise[:, :, :300], saved["flow_rand_noise_prefix"])
    assert torch.equal(noise.rand_ini, saved["hift_sine_rand_ini"])
    assert torch.equal(noise.sine_noise, saved["hift_sine_noise_prefix"])
    assert _sha256(noise.flow_noise) == manifest()["noise_full_sha256"]["flow.decoder.rand_noise[1,80,15000]"]


def test_shorter_sine_buffer_is_exact_prefix() -> None:
    flow, hift = _configs("tiny")
    long = build_noise(flow, hift, sine_samples=5003).sine_noise
    short = build_noise(flow, hift, sine_samples=1234).sine_noise
    assert torch.equal(long[:, :1234], short)


def test_real_size_noise_fingerprints() -> None:
    """Full 300 s real-size sine buffer (the only HiFT noise that reaches the audio)."""
    fingerprint = json.loads((FIXTURES / "real_size" / "real_noise_buffers_fingerprint.json").read_text())
    noise = build_noise(*_configs("real"))
    want = fingerprint["hift.m_source.l_sin_gen.sine_waves"]
    assert list(noise.sine_noise.shape) == want["shape"]
    np.testing.assert_array_equal(noise.sine_noise.flatten()[:5].numpy(), np.float32(want["first5"]))
    assert _sha256(noise.sine_noise) == want["sha256_f32_le"]
    assert _sha256(noise.rand_ini) == fingerprint["hift.m_source.l_sin_gen.rand_ini"]["sha256_f32_le"]
    assert _sha256(noise.flow_noise) == fingerprint["flow.decoder.rand_noise"]["sha256_f32_le"]


@pytest.mark.parametrize("prefix", ["tiny", "real"])
def test_noise_does_not_touch_global_rng(prefix: str) -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    build_noise(*_configs(prefix), sine_samples=10)
    assert torch.equal(before, torch.get_rng_state())
