"""KV caches for the two Qwen3 stacks (text LM and CRQ speech head).

Attention asks its cache to ``attend``: the cache stores the new keys/values and runs SDPA over
everything it holds. Two layouts:

* ``PrefixKVCache``: one sequence, grown by prefills. A ``ConversationState`` owns one per stack
  and keeps it across turns.
* ``BatchKVCache``: a padded, row-compacted batch used by decode steps. Rows 0..n-1 are the active
  sessions; each row has its own length, and padding keys are masked out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def gqa_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """SDPA for grouped-query attention without materialising repeated keys.

    q: [B, H, n, hd]; k, v: [B, K, S, hd]; mask: bool [B or 1, 1, n, S] (True = attend) or None.
    Query head h uses key head h // (H/K), as in HF's ``repeat_kv``. Folding the H/K query heads
    of a group into the query axis keeps every query row independent, so the math is unchanged.
    """
    b, h, n, hd = q.shape
    kv_heads = k.shape[1]
    assert h % kv_heads == 0, (h, kv_heads)
    group = h // kv_heads
    q_folded = q.reshape(b, kv_heads, group * n, hd)  # [B, K, G*n, hd], row g*n + i
    if mask is not None:
        mask = mask.repeat(1, 1, group, 1)  # [B|1, 1, G*n, S]
    out = F.scaled_dot_product_attention(q_folded, k, v, attn_mask=mask)
    return out.reshape(b, h, n, hd)


class PrefixKVCache:
    """Keys/values of one sequence for every layer; the length is the next position."""

    def __init__(self, num_layers: int) -> None:
        self.keys: list[Tensor | None] = [None] * num_layers
        self.values: list[Tensor | None] = [None] * num_layers
        self.length = 0

    def positions(self, n: int, device: torch.device) -> Tensor:
        return torch.arange(self.length, self.length + n, device=device)[None]  # [1, n]

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        assert q.shape[0] == 1 and k.shape[0] == 1, "PrefixKVCache holds a single sequence"
        old_k, old_v = self.keys[layer], self.values[layer]
        if old_k is not None and old_v is not None:
            k = torch.cat([old_k, k], dim=2)  # [1, K, length + n, hd]
            v = torch.cat([old_v, v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        n, total = q.shape[2], k.shape[2]
        mask = None
        if n > 1:
            # causal with an offset: query i sits at position total - n + i
            q_pos = torch.arange(total - n, total, device=q.device)[:, None]
            mask = (torch.arange(total, device=q.device)[None] <= q_pos)[None, None]
        return gqa_attention(q, k, v, mask)

    def advance(self, n: int) -> None:
        self.length += n

    def crop(self, length: int) -> None:
        """Forget every position at or after ``length``."""
        assert 0 <= length <= self.length, (length, self.length)
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            if k is not None and v is not None:
                self.keys[i], self.values[i] = k[:, :, :length], v[:, :, :length]
        self.length = length

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.keys, *self.values] if t is not None)


class BatchKVCache:
    """Decode-time cache for up to ``capacity`` rows, one new position per row per pass."""

    def __init__(
        self,
        *,
        num_layers: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        initial_len: int = 256,
    ) -> None:
        self._shape = (kv_heads, head_dim)
        self._dtype, self._device = dtype, device
        self._num_layers = num_layers
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []
        self._alloc(rows=1, seq=initial_len)
        self.lengths: list[int] = []  # per active row
        self._len_t = torch.zeros(0, dtype=torch.long, device=device)  # mirror of lengths

    @property
    def num_rows(self) -> int:
        return len(self.lengths)

    def _alloc(self, rows: int, seq: int) -> None:
        old_k, old_v = self.keys, self.values
        shape = (rows, self._shape[0], seq, self._shape[1])
        layers = range(self._num_layers)
        self.keys = [torch.zeros(shape, dtype=self._dtype, device=self._device) for _ in layers]
        self.values = [torch.zeros(shape, dtype=self._dtype, device=self._device) for _ in layers]
        for new, old in zip([*self.keys, *self.values], [*old_k, *old_v]):
            r, s = min(rows, old.shape[0]), min(seq, old.shape[2])
            new[:r, :, :s] = old[:r, :, :s]

    def _ensure(self, rows: int, seq: int) -> None:
        cap_rows, cap_seq = self.keys[0].shape[0], self.keys[0].shape[2]
        if rows > cap_rows or seq > cap_seq:
            # doubling keeps the amortised copy cost linear in the generated length
            self._alloc(max(rows, cap_rows * (2 if rows > cap_rows else 1)),
                        max(seq, cap_seq * (2 if seq > cap_seq else 1)))

    def add_row(self, prefix: PrefixKVCache) -> int:
        """Copy a session's prefix cache into a new last row; returns the row index."""
        row = self.num_rows
        self._ensure(row + 1, prefix.length + 1)
        for dst_k, dst_v, k, v in zip(self.keys, self.values, prefix.keys, prefix.values):
            assert k is not None and v is not None, "prefix cache was never filled"
            dst_k[row, :, : prefix.length] = k[0, :, : prefix.length]
            dst_v[row, :, : prefix.length] = v[0, :, : prefix.length]
        self.lengths.append(prefix.length)
        self._sync_lengths()
        return row

    def remove_row(self, row: int) -> None:
        """Drop a row; the last row moves into its place so rows stay compact."""
        last = self.num_rows - 1
        if row != last:
            n = self.lengths[last]
            for t in [*self.keys, *self.values]:
                t[row, :, :n] = t[last, :, :n]
            self.lengths[row] = n
        self.lengths.pop()
        self._sync_lengths()

    def _sync_lengths(self) -> None:
        self._len_t = torch.tensor(self.lengths, dtype=torch.long, device=self._device)

    def positions(self, n: int, device: torch.device) -> Tensor:
        assert n == 1, "BatchKVCache takes one position per row per pass"
        return self._len_t[:, None]  # [B, 1]

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        assert q.shape[0] == self.num_rows and q.shape[2] == 1, (q.shape, self.num_rows)
        keys, values = self.store(layer, k, v)
        return gqa_attention(q, keys, values, self.pass_mask(q.device)[:, None, None, :])

    def store(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write this pass's k, v [B, K, 1, hd] at each row's length; returns the keys and values
        the pass attends to, [B, K, span, hd] with span = max length + 1 (see ``pass_mask``)."""
        b = self.num_rows
        assert k.shape[0] == b and k.shape[2] == 1, (k.shape, b)
        if layer == 0:
            self._ensure(b, max(self.lengths) + 1)
        rows = torch.arange(b, device=k.device)
        self.keys[layer][rows, :, self._len_t] = k[:, :, 0]
        self.values[layer][rows, :, self._len_t] = v[:, :, 0]
        span = max(self.lengths) + 1
        return self.keys[layer][:b, :, :span], self.values[layer][:b, :, :span]

    def pass_mask(self, device: torch.device) -> Tensor:
        """bool [B, span], True = attend: each row's own positions and its new one."""
        span = max(self.lengths) + 1
        return torch.arange(span, device=device)[None] <= self._len_t[:, None]

    def advance(self, n: int) -> None:
        assert n == 1
        self.lengths = [x + 1 for x in self.lengths]
        self._len_t = self._len_t + 1
