"""Parity with the golden data made by upstream's own classes (tiny random weights).

Tolerances follow the golden README: ids exact, floats 1e-4, encoders 1e-5. The log-mel is
compared at 1e-4: a float32 FFT's rounding differs between FFT backends by up to ~3.5e-5 on these
features (the golden values are themselves 2.8e-5 from a float64 DFT), while masks are exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.fac_golden import FIXTURES, assert_close, case, wav
from utils.funaudiochat import ConversationState, SamplingParams, UserTurn, stream_turn
from utils.funaudiochat.frontend import frames_25hz
from utils.funaudiochat.kv_cache import PrefixKVCache

ENC_TOL, TOL = 1e-5, 1e-4


def test_a_frontend(runtime) -> None:
    a = case("a_frontend_turn1")
    audio = wav("audio_turn1.wav")
    assert torch.equal(torch.from_numpy(audio), a["waveform"])
    features, mel_lens = runtime.frontend([audio])
    assert_close(features, a["input_features"], TOL, "log-mel")
    assert mel_lens == [int(a["feature_attention_mask"].sum())]
    frames = frames_25hz(len(audio))
    assert frames == int(a["speech_attention_mask"].sum())
    assert runtime.model.padded_speech_len([frames]) == a["speech_ids"].shape[1]
    assert bool((a["speech_ids"] == runtime.config.audio.pad_token_id).all())
    state = ConversationState()
    state.add_user_message(runtime, UserTurn(audio=audio))
    ids, _ = state._prompt(runtime)
    assert ids == a["input_ids"][0].tolist()


def test_a2_frontend_server_json(runtime) -> None:
    a2 = case("a2_frontend_turn1_serverjson")
    audio = wav("audio_turn1.wav")
    frames = frames_25hz(len(audio), rounding="ceil")
    assert frames == int(a2["speech_attention_mask"].sum()) == 58
    assert runtime.model.padded_speech_len([frames]) == a2["speech_ids"].shape[1]
    state = ConversationState()
    state.add_user_message(runtime, UserTurn(audio=audio, frames_25hz=frames))
    ids, _ = state._prompt(runtime)
    assert ids == a2["input_ids"][0].tolist()


def test_b_encoders(runtime) -> None:
    a, b = case("a_frontend_turn1"), case("b_encoders_turn1")
    model = runtime.model
    mel_len = int(a["feature_attention_mask"].sum())
    out, trace = model.continuous_audio_tower(a["input_features"], [mel_len], 60, trace=True)
    assert trace is not None
    assert trace.chunk_bounds == b["continuous_cu_seqlens"].tolist()
    assert_close(trace.after_conv, b["continuous_after_conv_posemb"], ENC_TOL, "after conv")
    assert_close(trace.after_layers, b["continuous_after_layers"], ENC_TOL, "after layers")
    assert_close(trace.pooled[0], b["continuous_pooled"], ENC_TOL, "pooled")
    assert_close(out, b["continuous_features"], ENC_TOL, "continuous features")
    assert [p.shape[0] for p in trace.pooled] == b["continuous_output_lengths"].tolist()
    assert_close(model.audio_tower(b["discrete_fixed_ids"]), b["discrete_fixed_out"], ENC_TOL, "discrete")
    assert_close(model.audio_tower(a["speech_ids"]), b["discrete_of_prompt_speech_ids"], ENC_TOL,
                 "discrete pads")
    rows = model.encode_audio(a["input_features"], [mel_len], [57])
    assert_close(rows[0][None], b["merged_audio_features"], ENC_TOL, "merged")


@torch.inference_mode()
def test_c_forward(runtime) -> None:
    a, c = case("a_frontend_turn1"), case("c_forward_turn1")
    model = runtime.model
    rows = model.encode_audio(a["input_features"], [int(a["feature_attention_mask"].sum())], [57])
    embeds = model.embed_prompt(a["input_ids"], rows[0])
    assert_close(embeds, c["inputs_embeds"], TOL, "inputs_embeds")
    logits, hidden = model.language_model(embeds, model.new_lm_cache())
    assert_close(logits, c["text_logits_last"], TOL, "text logits")
    assert_close(hidden, c["last_hidden_state"], TOL, "hidden")
    speech = model.audio_invert_tower.parallel_logits(hidden + model.language_model.embed(a["input_ids"]))
    assert_close(speech[:, -5:], c["speech_logits_last_group"], TOL, "parallel CRQ logits")
    assert torch.equal(speech.argmax(-1), c["speech_logits_argmax"])


@torch.inference_mode()
def test_e_turn2_forward(runtime) -> None:
    e = case("e_turn2_inputs_forward")
    model = runtime.model
    mel_lens = e["feature_attention_mask"].sum(-1).tolist()
    frames = e["speech_attention_mask"].sum(-1).tolist()
    assert mel_lens == [230, 370] and frames == [57, 92]
    cont, _ = model.continuous_audio_tower(e["input_features"], mel_lens, e["speech_ids"].shape[1])
    assert_close(cont, e["continuous_features"], ENC_TOL, "continuous features (2 audios)")
    rows = model.encode_audio(e["input_features"], mel_lens, frames)
    embeds = model.embed_prompt(e["input_ids"], torch.cat(rows))
    assert_close(embeds, e["inputs_embeds"], TOL, "inputs_embeds")
    logits, hidden = model.language_model(embeds, model.new_lm_cache())
    assert_close(logits, e["text_logits_last"], TOL, "text logits")
    assert_close(hidden, e["last_hidden_state"], TOL, "hidden")
    # the same prompt built from the raw audio and the conversation API
    state = _turn2_state(runtime, assistant="Hello! How can I help you today?")
    state.add_user_message(runtime, UserTurn(audio=wav("audio_turn2.wav")))
    ids, _ = state._prompt(runtime)
    assert ids == e["input_ids"][0].tolist()


@torch.inference_mode()
def test_f_crq_standalone(runtime) -> None:
    f = case("f_crq_standalone")
    head = runtime.model.audio_invert_tower
    cache = PrefixKVCache(len(head.crq_transformer.layers))
    greedy = lambda logits, _i: logits.argmax(-1)
    bos = torch.tensor([runtime.config.audio.bos_token_id])
    t1, l1 = head.generate_group(f["inputs_embeds"][:, :2], cache, bos, greedy)
    t2, l2 = head.generate_group(f["inputs_embeds"][:, 2:], cache, t1[:, -1], greedy)
    assert torch.equal(torch.cat([t1, t2]), f["tokens"])
    assert_close(torch.cat([l1, l2]), f["logits"], TOL, "CRQ logits")


# -- generation cases, driven by each case's recorded settings --------------------------------


class ForcedEos:
    """d4's extra processor: speech EOS at a CRQ context of 12 ids, <|im_end|> as 8th token."""

    def __init__(self, prompt_len: int) -> None:
        self.prompt_len = prompt_len

    def text(self, context: Sequence[int], scores: torch.Tensor) -> torch.Tensor:
        return _only(scores, 151645) if len(context) - self.prompt_len == 7 else scores

    def speech(self, context: Sequence[int], scores: torch.Tensor) -> torch.Tensor:
        return _only(scores, 6562) if len(context) == 12 else scores


def _only(scores: torch.Tensor, token: int) -> torch.Tensor:
    out = torch.full_like(scores, float("-inf"))
    out[token] = 0.0
    return out


def _params(info: dict[str, Any]) -> tuple[SamplingParams, str]:
    gen, sp = info["gen_kwargs"], info["sp_gen_kwargs"]
    assert sp["only_crq_sampling"] and sp["force_text_abos"] == (not sp["disable_speech"])
    assert gen["eos_token_id"] == 151645 and gen["pad_token_id"] == 151643
    extra = ForcedEos(info["prompt_len"]) if "custom_logits_processor" in info else None
    params = SamplingParams(
        temperature=gen.get("temperature", 1.0),
        top_p=gen.get("top_p", 1.0),
        top_k=gen.get("top_k", 0),
        repetition_penalty=gen.get("repetition_penalty", 1.0),
        max_steps=gen["max_new_tokens"],
        do_sample=gen.get("do_sample", False),
        text_greedy=sp["text_greedy"],
        ban_sil_after_bos=gen.get("bad_words_ids") == [[151670, 151673]],
        extra_processor=extra,
    )
    return params, "s2t" if sp["disable_speech"] else "s2s"


def _turn2_state(runtime, assistant: str) -> ConversationState:
    state = ConversationState()
    state.add_user_message(runtime, UserTurn(audio=wav("audio_turn1.wav")))
    state.add_assistant_message(assistant)
    return state


class Recorder:
    """Captures every LM forward and CRQ call of a generation."""

    def __init__(self, model, monkeypatch) -> None:
        self.lm: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # input, logits, hidden
        self.crq: list[tuple[torch.Tensor, torch.Tensor]] = []
        model.language_model.register_forward_hook(lambda _m, inp, out: self.lm.append((inp[0], *out)))
        self._hooks = model.language_model._forward_hooks
        head = model.audio_invert_tower
        original = head.generate_group

        def wrapped(*args, **kwargs):
            out = original(*args, **kwargs)
            self.crq.append(out)
            return out

        monkeypatch.setattr(head, "generate_group", wrapped)

    def close(self) -> None:
        self._hooks.clear()


GEN_CASES = sorted(p.stem for p in (FIXTURES / "cases").glob("*.safetensors") if "_generate_" in p.stem)


def test_generation_cases_present() -> None:
    assert {c[:2] for c in GEN_CASES} >= {"d1", "d2", "d3", "d4"}


@pytest.mark.parametrize("name", GEN_CASES)
def test_generation(runtime, manifest, monkeypatch, name: str) -> None:
    info = manifest["files"][f"cases/{name}.safetensors"]["info"]
    want = case(name)
    params, mode = _params(info)
    if name.startswith("e2"):
        state = _turn2_state(runtime, "Hello! How can I help you today?")
        audio = wav("audio_turn2.wav")
    else:
        state, audio = ConversationState(), wav("audio_turn1.wav")
    rec = Recorder(runtime.model, monkeypatch)
    try:
        steps = list(stream_turn(runtime, state, UserTurn(audio=audio), params, mode=mode))
    finally:
        rec.close()
    assert [s.text_token for s in steps] == info["step_text_tokens"] == want["step_text_token"].tolist()
    assert [s.speech_tokens for s in steps] == info["step_speech_tokens"]
    prompt_len = info["prompt_len"]
    assert rec.lm[0][0].shape[1] == prompt_len
    assert state._caches is not None and state._caches.ids == want["output_ids"][0, :prompt_len].tolist()
    assert state.last_generated_ids == want["output_ids"][0, prompt_len:].tolist()
    speech = [t for s in steps if s.speech_tokens for t in s.speech_tokens]
    assert speech == info["speech_ids"]
    if "output_speech_ids" in want:
        assert speech == want["output_speech_ids"][0].tolist()
    _check_lm(rec, want, prompt_len)
    _check_crq(rec, want, mode)


def _check_lm(rec: Recorder, want: dict[str, torch.Tensor], prompt_len: int) -> None:
    assert rec.lm[0][0].shape[1] == prompt_len
    logits = torch.cat([lg for _, lg, _ in rec.lm])  # [steps, V]
    values, indices = logits.topk(64, dim=-1)
    assert torch.equal(indices, want["lm_logits_top64_indices"])
    assert_close(values, want["lm_logits_top64_values"], TOL, "LM top-64 logits")
    if "lm_logits_step0_full" in want:
        assert_close(logits[:1], want["lm_logits_step0_full"], TOL, "prefill logits")
    hidden = torch.cat([h[:, -1] for _, _, h in rec.lm])
    assert_close(hidden, want["lm_hidden_last"], TOL, "LM hidden")
    decode_inputs = torch.cat([x[:, -1] for x, _, _ in rec.lm[1:]])
    assert_close(decode_inputs, want["lm_decode_inputs_embeds"], TOL, "decode inputs_embeds")


def _check_crq(rec: Recorder, want: dict[str, torch.Tensor], mode: str) -> None:
    if mode == "s2t":
        assert rec.crq == []
        return
    assert torch.equal(torch.cat([t for t, _ in rec.crq]), want["crq_tokens_per_call"])
    if "crq_logits_per_call" in want:
        assert_close(torch.cat([lg for _, lg in rec.crq]), want["crq_logits_per_call"], TOL, "CRQ logits")


def test_d3_s2t_inputs(runtime) -> None:
    d3 = case("d3_s2t_inputs")
    state = ConversationState()
    state.add_user_message(runtime, UserTurn(audio=wav("audio_turn1.wav")), speech=False)
    ids, _ = state._prompt(runtime)
    assert ids == d3["input_ids"][0].tolist()
    assert torch.equal(d3["speech_ids"], case("a_frontend_turn1")["speech_ids"])


def test_fixture_files_match_manifest(manifest) -> None:
    import hashlib

    for rel, fp in manifest["file_fingerprints"].items():
        path = FIXTURES / rel
        if rel.startswith("tokenizers/") or not path.exists():
            continue
        assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == fp["sha256"], rel
