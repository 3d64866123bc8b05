"""Whisper-style continuous audio encoder (``continuous_audio_tower``).

100 Hz log-mel -> 2 s windows -> conv stem (50 Hz) -> pre-LN transformer that attends only within
its window -> 2x average pool (25 Hz) -> LayerNorm + projection to the LM width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import AudioConfig


def sinusoids(length: int, channels: int, device: torch.device, max_timescale: float = 10000.0) -> Tensor:
    """Whisper's positional table [length, channels]: sin half then cos half."""
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-increment * torch.arange(channels // 2, device=device, dtype=torch.float32))
    scaled = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv[None]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)


def conv_output_len(mel_len: int) -> int:
    """Frames after the stride-2 conv: 100 Hz -> 50 Hz."""
    return (mel_len - 1) // 2 + 1


class EncoderAttention(nn.Module):
    """Bidirectional multi-head attention (k_proj has no bias, as in Whisper)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, d // heads
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        """x: [N, T, d]; key_mask: bool [N, T] (True = real frame)."""
        n, t, d = x.shape
        q = self.q_proj(x).view(n, t, self.heads, self.head_dim).transpose(1, 2)  # [N, h, T, hd]
        k = self.k_proj(x).view(n, t, self.heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(n, t, self.heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
        return self.out_proj(out.transpose(1, 2).reshape(n, t, d))


class EncoderLayer(nn.Module):
    """Pre-LN Whisper encoder layer with exact (erf) GELU."""

    def __init__(self, cfg: AudioConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.self_attn = EncoderAttention(d, cfg.encoder_attention_heads)
        self.final_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, cfg.encoder_ffn_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_dim, d)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), key_mask)
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


@dataclass
class EncoderTrace:
    """Intermediates of one encoder call, kept for parity tests."""

    after_conv: Tensor  # [sum of chunk frames, d]
    chunk_bounds: list[int]  # cumulative chunk lengths after the conv stem, starting at 0
    after_layers: Tensor  # [sum of chunk frames, d]
    pooled: list[Tensor]  # per audio [T25_a, d]


class ContinuousAudioEncoder(nn.Module):
    """Maps log-mel features to 25 Hz vectors of the LM width."""

    def __init__(self, cfg: AudioConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.window = 2 * cfg.n_window  # mel frames per attention window (2 s)
        self.conv1 = nn.Conv1d(cfg.num_mel_bins, cfg.d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(cfg.d_model, cfg.d_model, kernel_size=3, stride=2, padding=1)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.ln_post = nn.LayerNorm(cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.output_dim)
        # Stored in checkpoints but unused at inference; kept so every checkpoint key has a home.
        self.audio_bos_eos_token = nn.Embedding(2, cfg.output_dim)

    def _chunks(self, features: Tensor, mel_lens: list[int]) -> tuple[Tensor, list[int]]:
        """Cut each audio's valid frames into windows, zero-padded to one batch [N, mels, W]."""
        pieces: list[Tensor] = []
        for a, n in enumerate(mel_lens):
            for start in range(0, n, self.window):
                pieces.append(features[a, :, start : min(start + self.window, n)])
        lens = [p.shape[1] for p in pieces]
        batch = features.new_zeros(len(pieces), features.shape[1], max(lens))
        for i, p in enumerate(pieces):
            batch[i, :, : p.shape[1]] = p
        return batch, lens

    def _stem(self, chunks: Tensor, lens: list[int]) -> tuple[Tensor, Tensor]:
        """Conv stem + positions restarting per window -> ([N, T50, d], bool mask [N, T50])."""
        dev = chunks.device
        mel_mask = torch.arange(chunks.shape[2], device=dev)[None] < torch.tensor(lens, device=dev)[:, None]
        # zero past each window's end so conv2 sees the same zero padding as a lone window
        h = F.gelu(self.conv1(chunks)) * mel_mask[:, None, :].to(chunks.dtype)
        h = F.gelu(self.conv2(h)).transpose(1, 2)  # [N, T50, d]
        h = h + sinusoids(h.shape[1], h.shape[2], dev).to(h.dtype)[None]
        out_lens = torch.tensor([conv_output_len(n) for n in lens], device=dev)
        return h, torch.arange(h.shape[1], device=dev)[None] < out_lens[:, None]

    def forward(
        self, features: Tensor, mel_lens: list[int], speech_maxlen: int, *, trace: bool = False
    ) -> tuple[Tensor, EncoderTrace | None]:
        """features: [A, mels, 3000]; mel_lens: valid mel frames per audio.

        Returns [A, speech_maxlen, output_dim]: rows past an audio's pooled length are zero and
        longer outputs are truncated, as the discrete encoder expects.
        """
        a = features.shape[0]
        assert features.dim() == 3 and features.shape[1] == self.cfg.num_mel_bins, features.shape
        assert len(mel_lens) == a, (len(mel_lens), a)
        out = features.new_zeros(a, speech_maxlen, self.cfg.output_dim)
        valid = [i for i, n in enumerate(mel_lens) if n > 0]
        if not valid:
            return out, None
        chunks, lens = self._chunks(features[valid], [mel_lens[i] for i in valid])
        h, frame_mask = self._stem(chunks, lens)  # [N, T50, d]
        after_conv = h[frame_mask]  # [sum T50, d]
        for layer in self.layers:
            h = layer(h, frame_mask)
        flat = h[frame_mask]  # [sum T50, d], windows in order
        per_audio = flat.split([conv_output_len(mel_lens[i]) for i in valid])
        pooled = [_pool_25hz(x) for x in per_audio]
        for i, p in zip(valid, pooled):
            rows = self.proj(self.ln_post(p))[:speech_maxlen]  # [T25, output_dim]
            out[i, : rows.shape[0]] = rows
        if not trace:
            return out, None
        bounds = [0]
        for n in lens:
            bounds.append(bounds[-1] + conv_output_len(n))
        return out, EncoderTrace(after_conv, bounds, flat, pooled)


def _pool_25hz(x: Tensor) -> Tensor:
    """[T50, d] -> [T50 // 2, d] by mean of frame pairs; shorter inputs are kept as they are."""
    if x.shape[0] < 2:
        return x
    return F.avg_pool1d(x.transpose(0, 1), kernel_size=2, stride=2).transpose(0, 1)
