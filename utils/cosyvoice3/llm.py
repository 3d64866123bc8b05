"""CosyVoice3LM: the Qwen2 decoder that turns text ids into 25 Hz speech tokens (spec §5-6).

Module names mirror upstream (`llm.model` is transformers' Qwen2ForCausalLM) so that the
release `llm.pt` loads by key. Only the speech side is ever decoded: the backbone's final
normed hidden state goes through `llm_decoder` (6761 classes), never through the Qwen2
`lm_head`, which exists only because the checkpoint stores it (tied to `embed_tokens`).

The model holds weights only; a KV cache (transformers' DynamicCache) belongs to the caller
(one per request, see llm_decode.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from transformers.cache_utils import DynamicCache
from transformers.models.qwen2 import Qwen2ForCausalLM
from transformers.models.qwen2.modeling_qwen2 import Qwen2Model, Qwen2RotaryEmbedding

from .llm_config import LLMConfig

Ids = Sequence[int] | Tensor


class Qwen2Backbone(nn.Module):
    """Upstream's `Qwen2Encoder`: a holder whose `model` is the HF causal LM (key prefix)."""

    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        # built from the config alone: llm.pt overwrites every weight, so no hub download
        self.model = Qwen2ForCausalLM(cfg.qwen2_config())

    @property
    def decoder(self) -> Qwen2Model:
        return self.model.model


class CosyVoice3LM(nn.Module):
    """Qwen2 backbone + `speech_embedding` (input rows) + `llm_decoder` (output head, no bias)."""

    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.llm = Qwen2Backbone(cfg)
        # upstream's order (state_dict key order): head first, then the speech input rows.
        # CosyVoice3 has no separate llm_embedding: sos and task_id are speech_embedding rows.
        self.llm_decoder = nn.Linear(cfg.llm_output_size, cfg.speech_vocab, bias=False)
        self.speech_embedding = nn.Embedding(cfg.speech_vocab, cfg.llm_input_size)

    @property
    def device(self) -> torch.device:
        return self.speech_embedding.weight.device

    def _ids(self, ids: Ids) -> Tensor:
        return torch.as_tensor(ids, dtype=torch.long, device=self.device).reshape(1, -1)  # [1, n]

    def embed_text(self, ids: Ids) -> Tensor:
        """Qwen2 text ids -> [1, n, D]."""
        return self.llm.decoder.embed_tokens(self._ids(ids))

    def embed_speech(self, ids: Ids) -> Tensor:
        """Speech-side ids (tokens, sos, task_id, ...) -> [1, n, D]."""
        return self.speech_embedding(self._ids(ids))

    def build_lm_input(self, tts_ids: Ids, *, prompt_text_ids: Ids = (),
                       prompt_speech_ids: Ids = ()) -> Tensor:
        """[sos | prompt text | tts text | task_id | prompt speech] -> [1, L, D] (§6).

        Zero-shot passes all three; cross-lingual only tts_ids; instruct2 passes the
        instruct text as prompt_text_ids and no prompt speech.
        """
        cfg = self.cfg
        parts = [
            self.embed_speech([cfg.sos]),
            self.embed_text(prompt_text_ids),  # absent parts have length 0
            self.embed_text(tts_ids),
            self.embed_speech([cfg.task_id]),
            self.embed_speech(prompt_speech_ids),
        ]
        return torch.cat(parts, dim=1)  # [1, 1 + Pt + n + 1 + Ps, D]

    def forward(self, x: Tensor, cache: DynamicCache | None = None) -> tuple[Tensor, DynamicCache]:
        """x: [B, n, D] input embeddings after the cached positions -> (final-normed hidden
        [B, n, D], the grown cache). Causal over the whole sequence, as upstream's all-true
        mask makes transformers do; positions continue from the cache length."""
        assert x.dim() == 3 and x.shape[-1] == self.cfg.llm_input_size, tuple(x.shape)
        if cache is None:
            cache = DynamicCache()
        out = self.llm.decoder(inputs_embeds=x, past_key_values=cache, use_cache=True)
        return out.last_hidden_state, cache

    def log_probs(self, hidden_last: Tensor) -> Tensor:
        """hidden of the last position [B, D] -> fp32 log-softmax over the speech vocab [B, V]."""
        assert hidden_last.dim() == 2, tuple(hidden_last.shape)
        head = self.llm_decoder
        return head(hidden_last.to(head.weight.dtype)).float().log_softmax(dim=-1)

    def step(self, x: Tensor, cache: DynamicCache | None = None) -> tuple[Tensor, Tensor, DynamicCache]:
        """One decoding step: (log-probs [B, V] of the last position, its hidden [B, D], cache)."""
        hidden, cache = self(x, cache)
        last = hidden[:, -1]  # [B, D]; upstream applies the head to this row only
        return self.log_probs(last), last, cache


def place(lm: CosyVoice3LM, device: torch.device, dtype: torch.dtype) -> CosyVoice3LM:
    """Move to device/dtype for inference. bf16/fp16 need CUDA; the head stays fp32 so the
    sampler sees full-precision log-probs, and RoPE frequencies stay fp32 (HF computes the
    angles in fp32, but a cast would already have rounded inv_freq)."""
    if device.type == "cpu" and dtype != torch.float32:
        raise ValueError(f"{dtype} is only supported on CUDA; use float32 on CPU")
    qwen2 = lm.cfg.qwen2_config()
    # a meta-device build has a meta inv_freq buffer, which .to() cannot move
    lm.llm.decoder.rotary_emb = Qwen2RotaryEmbedding(config=qwen2)
    lm.to(device=device, dtype=dtype)
    lm.llm.model.tie_weights()  # a move may create new Parameters; keep one text-embedding copy
    lm.llm_decoder.float()
    # rebuilt after the cast: .float() on a bf16-cast buffer would keep the rounded values
    lm.llm.decoder.rotary_emb = Qwen2RotaryEmbedding(config=qwen2, device=device)
    lm.eval().requires_grad_(False)
    return lm
