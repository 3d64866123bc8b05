"""Flow parity against upstream golden tensors: DiT, pre-lookahead, whole-flow calls,
and the chunk-by-chunk key/value-cached path against the chunk-masked whole call."""

from __future__ import annotations

import pytest
import torch

from tests.cv3_golden import FLOW_ATOL, assert_close, case
from utils.cosyvoice3 import Token2Wav
from utils.cosyvoice3.dit import DiTCache


def _capture(module: torch.nn.Module, store: dict, name: str, *, inputs: bool = False):
    """Record the first call's output (or positional inputs) of a module."""
    def hook(_mod, args, out=None):
        store.setdefault(name, args if inputs else out)
    return module.register_forward_pre_hook(hook) if inputs else module.register_forward_hook(hook)


@pytest.mark.parametrize("streaming,key", [(False, "out_full_attn"), (True, "out_chunk_attn")])
def test_dit_unit(model: Token2Wav, streaming: bool, key: str) -> None:
    d = case("dit_unit")
    est = model.flow.decoder.estimator
    seen: dict = {}
    hooks = [_capture(est.time_embed, seen, "time_embed_out"),
             _capture(est.input_embed, seen, "input_embed_out"),
             _capture(est.transformer_blocks[0], seen, "block0_out")]
    try:
        out = est(d["x"], d["mask"], d["mu"], d["t"], d["spks"], d["cond"], streaming=streaming)
    finally:
        for h in hooks:
            h.remove()
    assert_close(out, d[key], FLOW_ATOL, key)
    if not streaming:
        for name, got in seen.items():
            assert_close(got, d[f"{name}_full_attn"], FLOW_ATOL, name)


def test_chunk_mask_changes_the_output(model: Token2Wav) -> None:
    d = case("dit_unit")
    assert (d["out_full_attn"] - d["out_chunk_attn"]).abs().max() > 1e-3  # the case can tell them apart
    est = model.flow.decoder.estimator
    full = est(d["x"], d["mask"], d["mu"], d["t"], d["spks"], d["cond"], streaming=False)
    assert (full - d["out_chunk_attn"]).abs().max() > 1e-3


def test_prelookahead_unit(model: Token2Wav) -> None:
    d = case("prelookahead_unit")
    layer = model.flow.pre_lookahead_layer
    assert_close(layer(d["inputs"]), d["out_no_context"], FLOW_ATOL, "no context")
    with_context = layer(d["inputs"][:, :17], context=d["inputs"][:, 17:])
    assert_close(with_context, d["out_with_context"], FLOW_ATOL, "context")


def _run_flow(model: Token2Wav, tokens, prompt: bool, *, streaming: bool, finalize: bool):
    inp = case("inputs")
    flow = model.flow
    seen: dict = {}
    hooks = [_capture(flow.spk_embed_affine_layer, seen, "spk_proj"),
             _capture(flow.input_embedding, seen, "token_emb"),
             _capture(flow.pre_lookahead_layer, seen, "prelookahead_out"),
             _capture(flow.decoder.estimator, seen, "estimator_in", inputs=True)]
    taps: dict = {}
    try:
        if prompt:
            pt, pf = inp["prompt_token"], inp["prompt_feat"]
        else:
            pt, pf = inp["empty_prompt_token"], inp["empty_prompt_feat"]
        mel = flow.inference(tokens, pt, pf, inp["embedding"], streaming=streaming, finalize=finalize,
                             taps=taps)
    finally:
        for h in hooks:
            h.remove()
    _x, mask, mu, _t, spks, cond = seen.pop("estimator_in")
    seen.update(estimator_mask=mask, estimator_mu=mu, estimator_spks=spks, estimator_cond=cond)
    return mel, {**seen, **taps}


@pytest.mark.parametrize("name,streaming,prompt", [
    ("flow_offline", False, False), ("flow_offline_chunkmask", True, False),
    ("flow_offline_prompt", False, True)])
def test_flow_offline_cases(model: Token2Wav, name: str, streaming: bool, prompt: bool) -> None:
    golden = case(name)
    mel, seen = _run_flow(model, case("inputs")["speech_token"], prompt, streaming=streaming, finalize=True)
    assert_close(mel, golden["mel"], FLOW_ATOL, f"{name} mel")
    compared = [k for k in seen if k in golden]
    ode_steps = {"step_x_in", "step_v_cond", "step_v_uncond", "step_t"}
    assert {"estimator_mu", "estimator_cond", *ode_steps} <= set(compared)
    for key in compared:
        assert_close(seen[key], golden[key], FLOW_ATOL, f"{name} {key}")
    if name == "flow_offline":
        assert_close(model.flow.decoder.noise(0, 120), golden["noise_z"], 0.0, "noise_z")
        assert_close(model.flow.decoder.t_span(), golden["t_span"], 0.0, "t_span")


def test_flow_lookahead(model: Token2Wav) -> None:
    golden = case("flow_lookahead")
    mel, seen = _run_flow(model, golden["token"], False, streaming=False, finalize=False)
    assert_close(mel, golden["mel_full_attn"], FLOW_ATOL, "full attention")
    assert_close(seen["prelookahead_out"], golden["prelookahead_out"], FLOW_ATOL, "prelookahead_out")
    assert_close(seen["estimator_mu"], golden["estimator_mu"], FLOW_ATOL, "estimator_mu")
    mel, _ = _run_flow(model, golden["token"], False, streaming=True, finalize=False)
    assert_close(mel, golden["mel_chunk_attn"], FLOW_ATOL, "chunk attention")


def test_cached_chunks_equal_chunk_masked_flow(model: Token2Wav, embedding: torch.Tensor) -> None:
    flow = model.flow
    tokens = case("inputs")["speech_token"].long()
    spks = flow.speaker(embedding)
    caches = [DiTCache.empty(flow.cfg.dit.depth) for _ in range(flow.cfg.n_timesteps)]
    mels = [flow.chunk(tokens, a, b, spks, caches) for a, b in [(0, 25), (25, 50), (50, 60)]]
    assert [m.shape[2] for m in mels] == [50, 50, 20]
    assert all(layer.length == 120 for step in caches for layer in step.layers)
    assert_close(torch.cat(mels, dim=2), case("flow_offline_chunkmask")["mel"], FLOW_ATOL, "cached flow")
    # a chunk must start on the 25-token attention grid
    with pytest.raises(AssertionError):
        flow.chunk(tokens, 10, 35, spks, caches)
