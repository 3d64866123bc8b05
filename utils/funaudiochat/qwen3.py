"""Qwen3 decoder stack shared by the text backbone and the CRQ speech head.

Parameter names follow HF's ``Qwen3Model`` so checkpoints load as they are. RMSNorm, the MLP and
the rotary helper come from ``transformers``; attention is ours because it talks to our caches
(one sequence, or a padded batch of sessions with per-row positions).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn
from transformers.models.qwen3 import Qwen3Config  # transformers' lazy __init__ hides it from mypy
from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP, Qwen3RMSNorm, apply_rotary_pos_emb


class AttentionCache(Protocol):
    """What a Qwen3 stack needs from a KV cache (see ``kv_cache.py``)."""

    def positions(self, n: int, device: torch.device) -> Tensor: ...

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor: ...

    def advance(self, n: int) -> None: ...


class RotaryEmbedding(nn.Module):
    """Half-split RoPE over the full head dim; no stored buffers (none are in checkpoints)."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self._inv_freq: dict[torch.device, Tensor] = {}

    def _inv(self, device: torch.device) -> Tensor:
        if device not in self._inv_freq:
            exponent = torch.arange(0, self.head_dim, 2, dtype=torch.int64).to(device, torch.float32)
            self._inv_freq[device] = 1.0 / (self.theta ** (exponent / self.head_dim))
        return self._inv_freq[device]

    def forward(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """positions: [B, n] -> cos, sin: [B, n, hd] (computed in fp32, as HF does)."""
        inv = self._inv(positions.device)
        freqs = positions[..., None].float() * inv  # [B, n, hd/2]
        emb = torch.cat([freqs, freqs], dim=-1)  # [B, n, hd]
        return emb.cos().to(dtype), emb.sin().to(dtype)


class Qwen3Attention(nn.Module):
    """GQA self-attention with per-head q/k RMSNorm."""

    def __init__(self, cfg: Qwen3Config, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        d = cfg.hidden_size
        self.q_proj = nn.Linear(d, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, d, bias=False)
        self.q_norm = Qwen3RMSNorm(self.head_dim, eps=cfg.rms_norm_eps)
        self.k_norm = Qwen3RMSNorm(self.head_dim, eps=cfg.rms_norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: AttentionCache) -> Tensor:
        b, n, _ = x.shape  # [B, n, D]
        hd = self.head_dim
        q = self.q_norm(self.q_proj(x).view(b, n, self.heads, hd)).transpose(1, 2)  # [B, H, n, hd]
        k = self.k_norm(self.k_proj(x).view(b, n, self.kv_heads, hd)).transpose(1, 2)  # [B, K, n, hd]
        v = self.v_proj(x).view(b, n, self.kv_heads, hd).transpose(1, 2)  # [B, K, n, hd]
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        out = cache.attend(self.layer_idx, q, k, v)  # [B, H, n, hd]
        return self.o_proj(out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


class Qwen3Block(nn.Module):
    """Pre-norm decoder layer: attention and SwiGLU MLP, each with a residual."""

    def __init__(self, cfg: Qwen3Config, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = Qwen3RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.self_attn = Qwen3Attention(cfg, layer_idx)
        self.post_attention_layernorm = Qwen3RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.mlp = Qwen3MLP(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: AttentionCache) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen3Trunk(nn.Module):
    """Layers + final norm (HF ``Qwen3Model``), with token embeddings only when asked for."""

    def __init__(self, cfg: Qwen3Config, *, with_embeddings: bool) -> None:
        super().__init__()
        if with_embeddings:
            self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Qwen3Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = Qwen3RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)
        self.hidden_size = cfg.hidden_size

    def forward(self, x: Tensor, cache: AttentionCache) -> Tensor:
        """x: [B, n, D] input embeddings -> final-normed hidden states [B, n, D]."""
        assert x.dim() == 3 and x.shape[-1] == self.hidden_size, x.shape
        positions = cache.positions(x.shape[1], x.device)  # [B|1, n]
        cos, sin = self.rotary(positions, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, cache)
        cache.advance(x.shape[1])
        return self.norm(x)


class TextBackbone(nn.Module):
    """The Qwen3 causal LM (``language_model``): embeddings, trunk and an untied ``lm_head``."""

    def __init__(self, cfg: Qwen3Config) -> None:
        super().__init__()
        self.model = Qwen3Trunk(cfg, with_embeddings=True)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def embed(self, ids: Tensor) -> Tensor:
        return self.model.embed_tokens(ids)

    def forward(self, x: Tensor, cache: AttentionCache) -> tuple[Tensor, Tensor]:
        """x: [B, n, D] -> (fp32 logits of the last position [B, V], normed hidden [B, n, D])."""
        hidden = self.model(x, cache)
        logits = self.lm_head(hidden[:, -1]).float()  # only the last row is ever sampled
        return logits, hidden
