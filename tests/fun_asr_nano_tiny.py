"""A tiny random-weight Fun-ASR-Nano directory in the release layout, for tests.

    build_fun_asr_nano_tiny(dest)  ->  dest/config.yaml, model.pt, configuration.json,
                                       multilingual.tiktoken,
                                       Qwen3-0.6B/{config.json, tokenizer files}

funasr's own classes (SenseVoiceEncoderSmall, the Transformer adaptor, a transformers Qwen3)
are built from the same config.yaml that funasr later reads, only with tiny dimensions, so
the real `AutoModel(model=dest)` loads it as it loads the release. The LLM directory keeps the
release's name and its relative `init_param_path`, which is what makes funasr look for it
in the current directory unless the caller passes an absolute path. The tokenizer is a
byte-level BPE trained here on a few strings (so any text encodes), saved as a Qwen2 tokenizer
with the chat-template special tokens; nothing is downloaded. The output is random text.

Like the release, config.yaml configures a CTC decoder (for timestamps) and its SenseVoice
tokenizer, here with a byte vocabulary file in the directory named by a relative path, while
model.pt holds no CTC weights (upstream Fun-ASR issue #106), so funasr turns the CTC off.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import torch
import yaml

LLM_DIR = "Qwen3-0.6B"  # the release's name, relative in config.yaml as in the release
CTC_VOCAB = "multilingual.tiktoken"  # relative in config.yaml, like LLM_DIR
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_TRAINING_TEXT = (
    "You are a helpful assistant.",
    "请结合上下文信息，更加准确地完成语音转写任务。如果没有相关信息，我们会留空。",
    "**上下文信息：** 热词列表：[Fun-Audio-Chat, 语音助手] 语音转写成中文：",
    "英文 日文 韩文 粤语 the quick brown fox jumps over the lazy dog",
)

# Modelled on the release's config.yaml as public copies show it, shrunk: a 2-block encoder
# and a 2-layer, 64-wide Qwen3.
CONFIG: dict[str, Any] = {
    "model": "FunASRNano",
    "model_conf": {"lsm_weight": 0.1, "length_normalized_loss": True},
    "audio_encoder": "SenseVoiceEncoderSmall",
    "audio_encoder_conf": {
        "output_size": 32, "attention_heads": 2, "linear_units": 64, "num_blocks": 2,
        "tp_blocks": 1, "dropout_rate": 0.0, "positional_dropout_rate": 0.0,
        "attention_dropout_rate": 0.0, "input_layer": "pe", "pos_enc_class": "SinusoidalPositionEncoder",
        "normalize_before": True, "kernel_size": 11, "sanm_shfit": 0,
        "selfattention_layer_type": "sanm", "freeze": True},
    "llm": "Qwen3-0.6b",
    "llm_conf": {"hub": "hf", "freeze": True, "llm_dtype": "fp32", "init_param_path": LLM_DIR,
                 "use_lora": False},
    "audio_adaptor": "Transformer",
    "audio_adaptor_conf": {"downsample_rate": 1, "use_low_frame_rate": True, "ffn_dim": 64,
                           "llm_dim": 64, "encoder_dim": 32, "n_layer": 1, "attention_heads": 2,
                           "freeze": True},
    "frontend": "WavFrontend",
    "frontend_conf": {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25,
                      "frame_shift": 10, "lfr_m": 7, "lfr_n": 6, "cmvn_file": None},
    "tokenizer": "HuggingfaceTokenizer",
    "tokenizer_conf": {"init_param_path": "${llm_conf.init_param_path}"},
    "ctc_decoder": "Transformer",
    "ctc_decoder_conf": {"downsample_rate": 1, "ffn_dim": 64, "llm_dim": 32, "encoder_dim": 32,
                         "n_layer": 1, "attention_heads": 2},
    "ctc_vocab_size": 256 + 3000,  # the byte vocabulary + room for SenseVoice's ~1.7k special tokens
    "ctc_conf": {"dropout_rate": 0.0, "ctc_type": "builtin", "reduce": True, "ignore_nan_grad": True},
    "dataset_conf": {"ctc_tokenizer": "SenseVoiceTokenizer",
                     "ctc_tokenizer_conf": {"vocab_path": CTC_VOCAB, "is_multilingual": True,
                                            "num_languages": 8749}},
}
CONFIGURATION_JSON: dict[str, Any] = {
    "framework": "pytorch", "task": "auto-speech-recognition", "model": {"type": "funasr"},
    "pipeline": {"type": "funasr-pipeline"},
    "file_path_metas": {"init_param": "model.pt", "config": "config.yaml"},
}


def _qwen3_config(vocab_size: int, eos_id: int, pad_id: int) -> dict[str, Any]:
    return {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": vocab_size,
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "max_position_embeddings": 4096, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True, "use_sliding_window": False, "sliding_window": None,
        # Wider than Qwen's 0.02: greedy decoding of such random weights varies its tokens
        # instead of repeating one newline, so the text path shows.
        "initializer_range": 0.2, "torch_dtype": "float32", "bos_token_id": pad_id,
        "eos_token_id": eos_id, "pad_token_id": pad_id,
    }


def _save_tokenizer(llm_dir: Path) -> tuple[int, dict[str, int]]:
    """A byte-level BPE saved as a Qwen2 tokenizer; returns its size and the special ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(_TRAINING_TEXT, trainers.BpeTrainer(
        vocab_size=400, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = Qwen2TokenizerFast(tokenizer_object=bpe, unk_token=None, bos_token=None,
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.save_pretrained(str(llm_dir))
    return len(tokenizer), {token: bpe.token_to_id(token) for token in SPECIAL_TOKENS}


def _save_ctc_vocab(path: Path) -> None:
    """A tiktoken vocabulary of the 256 single bytes (base64 token, rank per line)."""
    path.write_text("".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256)))


def build_fun_asr_nano_tiny(dest: Path, *, seed: int = 0) -> Path:
    """Writes the directory at `dest` (created if needed) and returns it."""
    from funasr.models.fun_asr_nano.model import FunASRNano

    llm_dir = dest / LLM_DIR
    llm_dir.mkdir(parents=True, exist_ok=True)
    vocab_size, ids = _save_tokenizer(llm_dir)
    (llm_dir / "config.json").write_text(json.dumps(
        _qwen3_config(vocab_size, eos_id=ids["<|im_end|>"], pad_id=ids["<|endoftext|>"]), indent=2))
    _save_ctc_vocab(dest / CTC_VOCAB)
    (dest / "config.yaml").write_text(yaml.safe_dump(CONFIG, allow_unicode=True, sort_keys=False))
    (dest / "configuration.json").write_text(json.dumps(CONFIGURATION_JSON, indent=2))

    torch.manual_seed(seed)
    ctc_tokenizer = {**CONFIG["dataset_conf"]["ctc_tokenizer_conf"], "vocab_path": str(dest / CTC_VOCAB)}
    model = FunASRNano(input_size=80 * 7, **{
        **CONFIG, "llm_conf": {**CONFIG["llm_conf"], "init_param_path": str(llm_dir)},
        "dataset_conf": {**CONFIG["dataset_conf"], "ctc_tokenizer_conf": ctc_tokenizer}})
    weights = {name: tensor for name, tensor in model.state_dict().items()
               if not name.startswith(("ctc.", "ctc_decoder."))}  # untrained in the release
    torch.save(weights, dest / "model.pt")
    return dest
