"""The sampler against upstream's goldens (case sampling_unit): nucleus ids/probs, every
output, and every Exp(1) draw torch used, also rebuilt from the spec's MT19937 recipe (§7.4)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.tts_golden import case, case_metadata
from utils.cosyvoice3.ras_sampling import (
    GREEDY,
    RasConfig,
    SamplingFailed,
    nucleus,
    ras_sampling,
    sampling_ids,
)

NOTES = json.loads(case_metadata("sampling_unit")["notes"])
CASES = {c["name"]: c for c in NOTES["cases"]}


def mt19937_exponentials(seed: int, n: int, skip: int = 0) -> np.ndarray:
    """torch CPU's Exp(1) draws after manual_seed(seed), rebuilt independently (spec §7.4):
    two 32-bit MT19937 words per draw, 53-bit uniform, -log1p(-u) in double, then float32."""
    bits = np.random.MT19937()
    bits._legacy_seeding(seed)  # init_genrand(seed), as torch seeds its CPU generator
    words = bits.random_raw(2 * (skip + n)).astype(np.uint64)[2 * skip:]
    hi, lo = words[0::2], words[1::2]
    v = ((hi << np.uint64(32)) | lo) & np.uint64((1 << 53) - 1)
    u = v.astype(np.float64) * 2.0**-53
    return (-np.log1p(-u)).astype(np.float32)


@pytest.mark.parametrize("name", list(CASES))
def test_nucleus_and_draw_match_upstream(name: str) -> None:
    c, notes = case("sampling_unit"), CASES[name]
    logp, history = c[f"{name}.logp"], c[f"{name}.history"].tolist()
    ids, probs = nucleus(logp, top_p=0.8, top_k=25)
    assert ids.tolist() == c[f"{name}.nucleus_ids"].tolist()
    # unnormalised; bit-exact on the CPU the golden data came from, but torch's softmax kernel
    # (its exp) differs in the last bits between instruction sets (AVX-512 / AVX2)
    torch.testing.assert_close(probs, c[f"{name}.nucleus_probs"], rtol=2e-6, atol=0)
    assert ids.numel() == notes["nucleus_size"]

    torch.manual_seed(notes["seed"])
    draw = ras_sampling(logp, history, RasConfig())
    assert (draw.token, draw.nucleus_size, draw.fallback) == (notes["output"], notes["nucleus_size"],
                                                               notes["fallback"])
    # the nucleus pick before any fallback: argmax of p / q over the stored draws
    q = c[f"{name}.q_nucleus"]
    assert int(ids[int(torch.argmax(probs / q))]) == notes["nucleus_pick"]


@pytest.mark.parametrize("name", list(CASES))
def test_exponential_draws_are_torch_cpu_and_the_mt19937_recipe(name: str) -> None:
    c, notes = case("sampling_unit"), CASES[name]
    k = notes["nucleus_size"]
    torch.manual_seed(notes["seed"])
    assert torch.equal(torch.empty(k).exponential_(1), c[f"{name}.q_nucleus"])
    assert np.array_equal(mt19937_exponentials(notes["seed"], k), c[f"{name}.q_nucleus"].numpy())
    if notes["fallback"]:
        # the full-vocabulary redraw continues the same stream: 6761 more draws
        assert torch.equal(torch.empty(6761).exponential_(1), c[f"{name}.q_fallback"])
        assert np.array_equal(mt19937_exponentials(notes["seed"], 6761, skip=k),
                              c[f"{name}.q_fallback"].numpy())


def test_repetition_window() -> None:
    c = case("sampling_unit")
    # 5619 once among the last 10 (tau_r 0.1 -> one repeat is enough) -> fallback
    assert 5619 in c["repeat_fallback.history"].tolist()
    # 5619 eleven tokens back, outside the window -> no fallback
    history = c["no_repeat_window.history"].tolist()
    assert history.index(5619) == len(history) - 11
    torch.manual_seed(CASES["no_repeat_window"]["seed"])
    assert not ras_sampling(c["no_repeat_window.logp"], history).fallback


def test_ignore_eos_redraws() -> None:
    c, notes = case("sampling_unit"), NOTES["ignore_eos"]
    torch.manual_seed(notes["seed"])
    draws: list[int] = []
    generator = torch.default_generator
    for _ in range(notes["n_draws"]):  # what sampling_ids does, one draw at a time
        draws.append(ras_sampling(c["ignore_eos.logp"], [], generator=generator).token)
    assert draws == c["ignore_eos.draws"].tolist() == notes["draws"]
    torch.manual_seed(notes["seed"])
    sampled = sampling_ids(c["ignore_eos.logp"], [], ignore_eos=True)
    assert (sampled.token, sampled.trials) == (notes["output"], notes["n_draws"])
    assert sampled.draw.nucleus_size == notes["nucleus_size"]
    # without ignore_eos the first draw (a stop id) is accepted
    torch.manual_seed(notes["seed"])
    assert sampling_ids(c["ignore_eos.logp"], [], ignore_eos=False).token == 6562


def test_max_trials_raises_after_101_rejections() -> None:
    logp = torch.full((6761,), -1e4)
    logp[6562] = 0.0  # all mass on eos: every draw is a stop id, nucleus of 1
    gen = torch.Generator().manual_seed(5)
    with pytest.raises(SamplingFailed, match="sampling reaches max_trials 100 and still get eos"):
        sampling_ids(logp, [], ignore_eos=True, generator=gen)
    ref = torch.Generator().manual_seed(5)
    torch.empty(101).exponential_(1, generator=ref)  # 101 draws of one Exp(1) each
    assert torch.equal(torch.rand(4, generator=gen), torch.rand(4, generator=ref))


def test_greedy_variant_is_argmax_with_first_index_on_ties() -> None:
    logp = torch.full((6761,), -20.0)
    logp[[7, 3, 9]] = -0.5  # a three-way tie
    logp = logp.log_softmax(0)
    draw = ras_sampling(logp, [3] * 10, GREEDY, generator=torch.Generator().manual_seed(0))
    assert (draw.token, draw.nucleus_size, draw.fallback) == (3, 1, False)  # tau_r 2: never falls back


def test_own_generator_leaves_the_global_one_alone() -> None:
    c = case("sampling_unit")
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = ras_sampling(c["flat.logp"], [], generator=torch.Generator().manual_seed(13))
    assert torch.equal(torch.get_rng_state(), before)
    assert a.token == CASES["flat"]["output"]  # same seed, same stream as the global generator
