"""Assemble a tiny CosyVoice3 TTS model directory from the golden fixture files.

Test layout: the tiny LLM (greedy sampler config by default), the tiny flow/HiFT of
tests/fixtures/cosyvoice3/tiny_model, the two tiny ONNX models and the stand-in tokenizer
under CosyVoice-BlankEN/. Release layout: the same weights as llm.pt/flow.pt/hift.pt next to
the tiny cosyvoice3.yaml and CosyVoice-BlankEN/config.json. Large files are symlinked.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.tts_golden import FIXTURES, TOKEN2WAV_MODEL_DIR

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SINE_SAMPLES = 480 * 1000  # 20 s of vocoder noise: an exact prefix of upstream's 300 s


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src.resolve())


def _common(root: Path) -> None:
    for name in TOKENIZER_FILES:
        _link(FIXTURES / "tokenizer" / name, root / "CosyVoice-BlankEN" / name)
    _link(FIXTURES / "weights" / "tiny_speech_tokenizer_v3.onnx", root / "speech_tokenizer_v3.onnx")
    _link(FIXTURES / "weights" / "tiny_campplus.onnx", root / "campplus.onnx")


def tiny_tts_dir(root: Path, *, greedy: bool = True) -> Path:
    """The test layout in `root` (created); greedy picks the top_k 1 sampler config."""
    root.mkdir(parents=True, exist_ok=True)
    _common(root)
    config = "tiny_llm_greedy_config.json" if greedy else "tiny_llm_config.json"
    _link(FIXTURES / "config" / config, root / "llm_config.json")
    _link(FIXTURES / "weights" / "tiny_llm.safetensors", root / "llm.safetensors")
    for name in ("flow_config.json", "hift_config.json", "flow.safetensors", "hift.safetensors"):
        _link(TOKEN2WAV_MODEL_DIR / name, root / name)
    return root


def tiny_release_dir(root: Path, *, greedy: bool = True) -> Path:
    """The release layout in `root`: yaml + torch pickles of the same tiny weights."""
    root.mkdir(parents=True, exist_ok=True)
    _common(root)
    yaml = "tiny_cosyvoice3_greedy.yaml" if greedy else "tiny_cosyvoice3.yaml"
    shutil.copy(FIXTURES / "config" / yaml, root / "cosyvoice3.yaml")
    qwen2_config = FIXTURES / "config" / "tiny_CosyVoice-BlankEN_config.json"
    shutil.copy(qwen2_config, root / "CosyVoice-BlankEN" / "config.json")
    torch.save(load_file(str(FIXTURES / "weights" / "tiny_llm.safetensors")), root / "llm.pt")
    for name in ("flow", "hift"):
        torch.save(load_file(str(TOKEN2WAV_MODEL_DIR / f"{name}.safetensors")), root / f"{name}.pt")
    return root
