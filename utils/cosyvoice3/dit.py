"""DiT velocity estimator of the CosyVoice3 flow (spec section 5).

Module and parameter names follow upstream's checkpoint keys
(`decoder.estimator.<name>`), so the release state_dict loads strictly.

The estimator runs in two ways with one code path:
- over a whole sequence with a full or static-chunk attention mask (upstream behaviour);
- over one attention chunk at a time with a `DiTCache` that keeps, per layer, the keys
  and values of earlier chunks plus the tails of the causal positional convs. Under the
  static chunk mask a chunk only sees earlier chunks and itself, so chunk-by-chunk
  evaluation gives the same result as the masked whole-sequence call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from .config import DiTConfig

_POS_KERNEL = 31
_POS_GROUPS = 16


class AttentionStore(Protocol):
    """A block's key/value store: takes a chunk's keys/values and attends its queries.

    `KVCache` is the per-stream one; the batched and static vocoders (batched_stream.py,
    static_flow.py) pass stores over the rows of several streams.
    """

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               first_visible: int = 0) -> torch.Tensor: ...


class KVCache:
    """Keys and values of one attention layer, grown in place (amortised doubling).

    Frames before `first_visible` (upstream's `num_decoding_left_chunks` limit) are
    dropped, which bounds the memory of a long reply when that limit is set.
    """

    def __init__(self) -> None:
        self._k: torch.Tensor | None = None  # [B, H, capacity, d]
        self._v: torch.Tensor | None = None
        self._lo = self._hi = 0  # visible frames are buffer[:, :, lo:hi]
        self.length = 0  # frames appended in total (absolute index of the next frame)
        # set while _k/_v are rows [row:row+B] of buffers shared with other caches (append_stacked)
        self._stack: _Stack | None = None
        self._row = 0

    @property
    def visible(self) -> int:
        """Frames currently held (and attended to)."""
        return self._hi - self._lo

    def append(self, k: torch.Tensor, v: torch.Tensor,
               first_visible: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Add [B, H, n, d] keys/values; return views over frames first_visible.. so far."""
        n = k.shape[2]
        self._drop_before(first_visible)
        if self._k is None or self._v is None or self._hi + n > self._k.shape[2]:
            self._stack = None  # outgrew the shared rows: continue in a buffer of its own
            visible = self._hi - self._lo
            new_k = k.new_empty(k.shape[0], k.shape[1], max(2 * (visible + n), 64), k.shape[3])
            new_v = v.new_empty(new_k.shape)
            if self._k is not None and self._v is not None:
                new_k[:, :, :visible] = self._k[:, :, self._lo:self._hi]
                new_v[:, :, :visible] = self._v[:, :, self._lo:self._hi]
            self._k, self._v, self._lo, self._hi = new_k, new_v, 0, visible
        self._k[:, :, self._hi:self._hi + n] = k
        self._v[:, :, self._hi:self._hi + n] = v
        self._hi += n
        self.length += n
        return self._k[:, :, self._lo:self._hi], self._v[:, :, self._lo:self._hi]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               first_visible: int = 0) -> torch.Tensor:
        """Append the new keys/values [B, H, n, d], then attend q [B, H, n, d] to all visible."""
        keys, values = self.append(k, v, first_visible)
        return F.scaled_dot_product_attention(q, keys, values)

    def _drop_before(self, first_visible: int) -> None:
        self._lo = max(self._lo, self._hi - (self.length - first_visible))


@dataclass(eq=False)
class _Stack:
    """Key/value buffers [R, H, capacity, d] whose row blocks belong to several caches."""

    k: torch.Tensor
    v: torch.Tensor


def append_stacked(caches: Sequence[KVCache], k: torch.Tensor, v: torch.Tensor,
                   first_visible: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`append` for caches holding the same frames: caches[i] takes rows [iB, (i+1)B) of
    k/v [NB, H, n, d]; returns keys/values [NB, H, visible, d] of all of them.

    The first call copies the caches' frames into one shared buffer and makes each cache a
    row view of it; while the same caches come back in the same order, an append is one
    copy and the keys are a view: no per-call concatenation of every stream's history.
    A cache appended to on its own still writes its rows there (or leaves on growth).
    """
    rows = k.shape[0] // len(caches)
    n = k.shape[2]
    first = caches[0]
    assert k.shape[0] == rows * len(caches) and all(c.length == first.length for c in caches), (
        k.shape, [c.length for c in caches])
    for c in caches:
        c._drop_before(first_visible)
    stack = first._stack
    shared = (stack is not None and stack.k.shape[0] == k.shape[0]
              and all(c._stack is stack and c._row == i * rows and (c._lo, c._hi) == (first._lo, first._hi)
                      for i, c in enumerate(caches))
              and first._hi + n <= stack.k.shape[2])
    if not shared:
        stack = _restack(caches, k, v, rows, n)
    assert stack is not None
    lo, hi = first._lo, first._hi
    stack.k[:, :, hi:hi + n] = k
    stack.v[:, :, hi:hi + n] = v
    for c in caches:
        c._hi += n
        c.length += n
    return stack.k[:, :, lo:hi + n], stack.v[:, :, lo:hi + n]


def _restack(caches: Sequence[KVCache], k: torch.Tensor, v: torch.Tensor, rows: int, n: int) -> _Stack:
    """Copy every cache's visible frames into fresh shared buffers with room to grow."""
    visible = caches[0].visible
    assert all(c.visible == visible for c in caches)
    shape = (k.shape[0], k.shape[1], max(2 * (visible + n), 64), k.shape[3])
    stack = _Stack(k.new_empty(shape), v.new_empty(shape))
    for i, c in enumerate(caches):
        if c._k is not None and c._v is not None:
            stack.k[i * rows:(i + 1) * rows, :, :visible] = c._k[:, :, c._lo:c._hi]
            stack.v[i * rows:(i + 1) * rows, :, :visible] = c._v[:, :, c._lo:c._hi]
        c._k, c._v = stack.k[i * rows:(i + 1) * rows], stack.v[i * rows:(i + 1) * rows]
        c._lo, c._hi, c._stack, c._row = 0, visible, stack, i * rows
    return stack


@dataclass
class DiTCache:
    """Everything one estimator needs from earlier chunks of the same ODE step."""

    layers: list[KVCache]
    pos_tails: list[torch.Tensor | None] = field(default_factory=lambda: [None, None])  # [B, 30, D]
    length: int = 0  # frames already processed (= RoPE position of the next frame)

    @classmethod
    def empty(cls, depth: int) -> DiTCache:
        return cls(layers=[KVCache() for _ in range(depth)])


class TimestepEmbedding(nn.Module):
    """Sinusoidal features of 1000*t followed by a two-layer MLP."""

    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.time_mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        assert t.dim() == 1, f"t must be [B], got {tuple(t.shape)}"
        half = self.freq_dim // 2
        step = math.log(10000) / (half - 1)
        freqs = torch.exp(torch.arange(half, device=t.device).float() * -step)
        angles = 1000 * t.float().unsqueeze(1) * freqs.unsqueeze(0)  # [B, half]
        feats = torch.cat((angles.sin(), angles.cos()), dim=-1).to(t.dtype)  # [B, 256]
        return self.time_mlp(feats)


class CausalConvPositionEmbedding(nn.Module):
    """Two left-padded grouped convs with Mish; the tails make it chunkable."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv1d(dim, dim, _POS_KERNEL, groups=_POS_GROUPS), nn.Mish())
        self.conv2 = nn.Sequential(nn.Conv1d(dim, dim, _POS_KERNEL, groups=_POS_GROUPS), nn.Mish())

    def forward(self, x: torch.Tensor, cache: DiTCache | None) -> torch.Tensor:
        """x [B, T, D] -> [B, T, D]; the convs run on this time-major layout directly."""
        h = x
        for i, seq in enumerate((self.conv1, self.conv2)):
            conv, act = cast(nn.Conv1d, seq[0]), seq[1]
            h = act(_grouped_conv_time_major(conv, self._with_history(h, cache, i)))
        return h

    @staticmethod
    def _with_history(h: torch.Tensor, cache: DiTCache | None, i: int) -> torch.Tensor:
        keep = _POS_KERNEL - 1
        tail = None if cache is None else cache.pos_tails[i]
        if tail is None:
            tail = h.new_zeros(h.shape[0], keep, h.shape[2])
        padded = torch.cat([tail, h], dim=1)  # [B, keep + T, D]
        if cache is not None:
            cache.pos_tails[i] = padded[:, -keep:]
        return padded


def _grouped_conv_time_major(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """conv over x [B, T, D] (time-major) -> [B, T', D], without transposing copies.

    [B, T, D] memory is the channels-last layout of [B, D, 1, T], where oneDNN's grouped
    conv with 4 channels per group runs 2-3x faster than on channel-major input.
    """
    image = x.transpose(1, 2).unsqueeze(2)  # [B, D, 1, T], channels-last strides
    weight = conv.weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)  # [D, D/G, 1, k]
    out = F.conv2d(image, weight, conv.bias, groups=conv.groups)  # [B, D, 1, T']
    return out.squeeze(2).transpose(1, 2)  # [B, D, T'] -> [B, T', D]


class InputEmbedding(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(cfg.mel_dim * 2 + cfg.mu_dim + cfg.spk_dim, cfg.dim)
        self.conv_pos_embed = CausalConvPositionEmbedding(cfg.dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, mu: torch.Tensor, spks: torch.Tensor,
                cache: DiTCache | None) -> torch.Tensor:
        spk_rows = spks.unsqueeze(1).expand(-1, x.shape[1], -1)  # [B, S] -> [B, T, S]
        h = self.proj(torch.cat([x, cond, mu, spk_rows], dim=-1))
        return self.conv_pos_embed(h, cache) + h


class RotaryEmbedding(nn.Module):
    """Interleaved-pair RoPE over the first `dim_head` channels of q/k.

    Upstream applies it before the head split, so only head 0 is rotated; we keep that.
    """

    inv_freq: torch.Tensor  # buffer [dim_head/2], registered in __init__

    def __init__(self, dim_head: int) -> None:
        super().__init__()
        inv_freq = 1.0 / (10000 ** (torch.arange(0, dim_head, 2).float() / dim_head))
        self.register_buffer("inv_freq", inv_freq)  # persistent: it is in the checkpoint

    def angles(self, start: int, length: int) -> torch.Tensor:
        """fp32 angles for positions start..start+length-1 (fp16 cannot count past 2048)."""
        pos = torch.arange(start, start + length, device=self.inv_freq.device, dtype=torch.float32)
        freqs = pos.unsqueeze(1) * self.inv_freq.float().unsqueeze(0)  # [T, d/2]
        return freqs.repeat_interleave(2, dim=-1)  # [T, d], pairs share an angle

    def angles_at(self, starts: torch.Tensor, length: int) -> torch.Tensor:
        """`angles` per row from a device tensor of starts [B] -> [B, T, d] (no host read)."""
        pos = (starts[:, None] + torch.arange(length, device=starts.device)).float()  # [B, T]
        freqs = pos.unsqueeze(-1) * self.inv_freq.float()  # [B, T, d/2]
        return freqs.repeat_interleave(2, dim=-1)


def _apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """x [B, T, H*d]; rotate adjacent pairs of the first angles.shape[-1] channels.

    angles [T, d] (shared) or [B, T, d] (a position per row) broadcast over x.
    """
    width = angles.shape[-1]
    rot, rest = x[..., :width], x[..., width:]
    pairs = rot.unflatten(-1, (-1, 2))  # [B, T, d/2, 2]
    swapped = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)  # [B, T, d]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    return torch.cat([rot * cos + swapped * sin, rest], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        inner = cfg.heads * cfg.dim_head
        self.heads = cfg.heads
        self.to_q = nn.Linear(cfg.dim, inner)
        self.to_k = nn.Linear(cfg.dim, inner)
        self.to_v = nn.Linear(cfg.dim, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, cfg.dim)])  # index 0 matches upstream keys

    def forward(self, x: torch.Tensor, angles: torch.Tensor, mask: torch.Tensor | None,
                kv: AttentionStore | None, first_visible: int = 0) -> torch.Tensor:
        b, t, _ = x.shape
        q = _apply_rope(self.to_q(x), angles)
        k = _apply_rope(self.to_k(x), angles)
        v = self.to_v(x)
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))  # [B, H, T, d]
        if kv is not None:
            assert mask is None, "a chunk sees its cache and itself: no mask"
            out = kv.attend(q, k, v, first_visible)  # keys: [B, H, visible cached + T, d]
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(b, t, -1)  # [B, H, T, d] -> [B, T, H*d]
        return self.to_out[0](out)


class AdaLayerNormZero(nn.Module):
    """Six modulation vectors from the time embedding: shift/scale/gate for attn and ff."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim * 6)

    def forward(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(z.unsqueeze(1) for z in self.linear(F.silu(c)).chunk(6, dim=1))  # 6 x [B, 1, D]


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        inner = dim * mult
        # Identity sits where upstream has dropout, keeping the keys ff.ff.0.0 / ff.ff.2.
        self.ff = nn.Sequential(
            nn.Sequential(nn.Linear(dim, inner), nn.GELU(approximate="tanh")),
            nn.Identity(),
            nn.Linear(inner, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff(x)


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.attn_norm = AdaLayerNormZero(cfg.dim)
        self.attn = Attention(cfg)
        self.ff = FeedForward(cfg.dim, cfg.ff_mult)

    def forward(self, h: torch.Tensor, c: torch.Tensor, angles: torch.Tensor, mask: torch.Tensor | None,
                kv: AttentionStore | None, first_visible: int = 0) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = (_to_rows(m, h) for m in self.attn_norm(c))
        normed = _layer_norm(h) * (1 + scale1) + shift1
        h = h + gate1 * self.attn(normed, angles, mask, kv, first_visible)
        normed = _layer_norm(h) * (1 + scale2) + shift2
        return h + gate2 * self.ff(normed)


class AdaLayerNormFinal(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim * 2)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, shift = self.linear(F.silu(c)).chunk(2, dim=1)  # scale first, unlike the blocks
        scale, shift = _to_rows(scale.unsqueeze(1), h), _to_rows(shift.unsqueeze(1), h)
        return _layer_norm(h) * (1 + scale) + shift


def _to_rows(m: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Time modulation [Bc, 1, D] for h [B, T, D], where B is a multiple of Bc.

    Bc < B is the batched vocoder: every pair of CFG rows shares one time, so the time
    path runs on two rows, exactly as for one stream (a matmul's rounding depends on its
    row count), and is repeated here for every stream.
    """
    return m if m.shape[0] == h.shape[0] else m.repeat(h.shape[0] // m.shape[0], 1, 1)


def _layer_norm(h: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(h, (h.shape[-1],), eps=1e-6)


def attention_mask(valid: torch.Tensor, chunk_size: int | None, left_chunks: int = -1) -> torch.Tensor:
    """Boolean [B, 1, T, T] mask (True = may attend) from key validity [B, 1, T].

    With `chunk_size`, query i sees keys j < (i // chunk_size + 1) * chunk_size, i.e. its
    own static chunk and earlier ones: all of them, or the last `left_chunks` if >= 0.
    """
    valid = valid.bool()
    t = valid.shape[-1]
    mask = valid.expand(-1, t, -1)  # [B, T(query), T(key)]
    if chunk_size is not None:
        pos = torch.arange(t, device=valid.device)
        chunk = pos // chunk_size
        visible = pos.unsqueeze(0) < ((chunk + 1) * chunk_size).unsqueeze(1)  # [T(query), T(key)]
        if left_chunks >= 0:
            visible &= pos.unsqueeze(0) >= ((chunk - left_chunks).clamp(min=0) * chunk_size).unsqueeze(1)
        mask = mask & visible.unsqueeze(0)
    # A query with no visible key would give NaN; upstream lets it see everything.
    mask = mask | ~mask.any(dim=-1, keepdim=True)
    return mask.unsqueeze(1)


class DiT(nn.Module):
    """Velocity estimator: (x, mask, mu, t, spks, cond) -> v, all channel-first."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.time_embed = TimestepEmbedding(cfg.dim)
        self.input_embed = InputEmbedding(cfg)
        self.rotary_embed = RotaryEmbedding(cfg.dim_head)
        self.transformer_blocks = nn.ModuleList([DiTBlock(cfg) for _ in range(cfg.depth)])
        self.norm_out = AdaLayerNormFinal(cfg.dim)
        self.proj_out = nn.Linear(cfg.dim, cfg.mel_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, t: torch.Tensor,
                spks: torch.Tensor, cond: torch.Tensor, streaming: bool = False) -> torch.Tensor:
        """Whole-sequence call; `streaming` selects the static chunk mask."""
        chunk = self.cfg.static_chunk_size if streaming else None
        mask = attention_mask(mask, chunk, self.cfg.num_decoding_left_chunks)
        return self._run(x, mu, t, spks, cond, mask, cache=None)

    def forward_chunk(self, x: torch.Tensor, mu: torch.Tensor, t: torch.Tensor, spks: torch.Tensor,
                      cond: torch.Tensor, cache: DiTCache) -> torch.Tensor:
        """One attention chunk that sees itself and the earlier chunks in `cache` (all of
        them, or the last `num_decoding_left_chunks` when that is >= 0)."""
        out = self._run(x, mu, t, spks, cond, mask=None, cache=cache)
        cache.length += x.shape[2]
        return out

    def _run(self, x: torch.Tensor, mu: torch.Tensor, t: torch.Tensor, spks: torch.Tensor,
             cond: torch.Tensor, mask: torch.Tensor | None, cache: DiTCache | None) -> torch.Tensor:
        start = 0 if cache is None else cache.length
        angles = self.rotary_embed.angles(start, x.shape[2])
        size, left = self.cfg.static_chunk_size, self.cfg.num_decoding_left_chunks
        first_visible = max(start // size - left, 0) * size if left >= 0 else 0
        return self.run_layers(x, mu, t, spks, cond, angles, mask, cache,
                               None if cache is None else cache.layers, first_visible)

    def run_layers(self, x: torch.Tensor, mu: torch.Tensor, t: torch.Tensor, spks: torch.Tensor,
                   cond: torch.Tensor, angles: torch.Tensor, mask: torch.Tensor | None,
                   cache: DiTCache | None, kv: Sequence[AttentionStore] | None,
                   first_visible: int = 0) -> torch.Tensor:
        """The estimator body with the positions and caches given explicitly.

        `angles` is [T, d], or [B, T, d] when rows sit at different positions; `cache`
        supplies the positional convs' tails, `kv` one key/value store per block. The
        batched vocoder (batched_stream.py) passes stacked tails, a per-row store and the
        times of one CFG pair `t` [2], shared by every stream's pair of rows.
        """
        b, n_mel, t_len = x.shape
        assert mu.shape == cond.shape == (b, n_mel, t_len), (x.shape, mu.shape, cond.shape)
        assert spks.shape == (b, self.cfg.spk_dim) and t.dim() == 1 and b % t.shape[0] == 0, (
            spks.shape, t.shape)
        c = self.time_embed(t)  # [B or a divisor of B (rows sharing a time: see _to_rows), D]
        h = self.input_embed(x.transpose(1, 2), cond.transpose(1, 2), mu.transpose(1, 2), spks, cache)
        for i, block in enumerate(self.transformer_blocks):
            h = block(h, c, angles, mask, None if kv is None else kv[i], first_visible)
        h = self.norm_out(h, c)
        return self.proj_out(h).transpose(1, 2)  # [B, T, 80] -> [B, 80, T]
