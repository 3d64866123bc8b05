"""The CosyVoice3 LLM as a plain Hugging Face Qwen2ForCausalLM for vLLM (tts spec §11).

vLLM serves the speech side only: its input embedding is `speech_embedding` (generated
speech ids are fed back through it) and its head is `llm_decoder`, over the 6561 + 200 speech
vocabulary; the text embedding never reaches vLLM because every request arrives as
`prompt_embeds` (the §6 lm_input). `llm_decoder` has no bias, so the architecture stays
`Qwen2ForCausalLM` and vLLM needs no custom model class.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .llm import CosyVoice3LM

EXPORT_DIR = "vllm"  # inside the model directory, as upstream writes it
_MARKER = "cosyvoice3_export.json"  # says which checkpoint the export was made from


def export_for_vllm(lm: CosyVoice3LM, out_dir: str | Path, *, dtype: torch.dtype = torch.bfloat16,
                    source: str = "") -> Path:
    """Write config.json + model.safetensors to out_dir (reused when `source` matches)."""
    out = Path(out_dir)
    marker = out / _MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("source") == source and source:
        return out
    from transformers.models.qwen2 import Qwen2ForCausalLM

    config = lm.cfg.qwen2_config()
    config.vocab_size = lm.cfg.speech_vocab
    config.tie_word_embeddings = False
    config.bos_token_id = config.eos_token_id = None  # vLLM must not stop on a text eos id
    config.torch_dtype = dtype
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    state = {f"model.{k}": v for k, v in lm.llm.decoder.state_dict().items()
             if not k.startswith("embed_tokens.") and "rotary_emb" not in k}
    state["model.embed_tokens.weight"] = lm.speech_embedding.weight
    state["lm_head.weight"] = lm.llm_decoder.weight
    weights = {k: v.detach().to("cpu", dtype) for k, v in state.items()}
    model.load_state_dict(weights, strict=True, assign=True)
    model.save_pretrained(out, safe_serialization=True)
    marker.write_text(json.dumps({"source": source}))
    return out
