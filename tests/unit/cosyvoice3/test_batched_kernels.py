"""The batched vocoder's shortcuts equal their plain definitions."""

from __future__ import annotations

import torch

from utils.cosyvoice3 import Token2Wav
from utils.cosyvoice3.dit import KVCache, append_stacked


def test_frame_rate_source_equals_merged_excitation(model: Token2Wav) -> None:
    src = model.hift.m_source
    spf = src.samples_per_frame
    f0 = torch.tensor([[0.0, 120.0, 180.0, 5.0], [200.0, 0.0, 90.0, 300.0]])
    phase = torch.rand(2, src.n_harmonics, dtype=torch.float64)
    noise = [model.hift.sine_noise[:, s:s + 4 * spf] for s in (0, 3 * spf)]
    got, got_phase = src.source(f0, phase, noise)
    for row in range(2):
        excitation, want_phase = src(f0[row:row + 1], phase[row:row + 1], noise[row])
        torch.testing.assert_close(got[row:row + 1], src.merge(excitation), atol=1e-6, rtol=0)
        assert torch.equal(got_phase[row:row + 1], want_phase)


def test_stacked_caches_equal_their_own_appends() -> None:
    torch.manual_seed(0)
    alone, stacked = [KVCache() for _ in range(3)], [KVCache() for _ in range(3)]
    for step in range(5):
        k, v = torch.randn(6, 2, 20, 4), torch.randn(6, 2, 20, 4)  # outgrows 64 frames
        if step == 2:  # one by one: each cache writes its own rows of the store
            for i in range(3):
                keys, values = stacked[i].append(k[2 * i:2 * i + 2], v[2 * i:2 * i + 2])
                want_k, want_v = alone[i].append(k[2 * i:2 * i + 2], v[2 * i:2 * i + 2])
                assert torch.equal(keys, want_k) and torch.equal(values, want_v)
            continue
        keys, values = append_stacked(stacked, k, v, first_visible=20 * max(step - 1, 0))
        want = [alone[i].append(k[2 * i:2 * i + 2], v[2 * i:2 * i + 2], 20 * max(step - 1, 0))
                for i in range(3)]
        assert torch.equal(keys, torch.cat([w[0] for w in want]))
        assert torch.equal(values, torch.cat([w[1] for w in want]))
    assert [c.length for c in stacked] == [c.length for c in alone]
