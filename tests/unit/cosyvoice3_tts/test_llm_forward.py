"""CosyVoice3LM forward against upstream's goldens (case llm_forward; lm_input layouts of
llm_generate_greedy): input layout, Qwen2 hidden states, head logits, log-probs, KV-cached step."""

from __future__ import annotations

import pytest
import torch

from tests.tts_golden import FIXTURES, HIDDEN_ATOL, LOGP_ATOL, case, max_diff, tiny_lm
from utils.cosyvoice3.llm import place
from utils.cosyvoice3.llm_loading import load_llm_files


def zero_shot_input() -> torch.Tensor:
    c = case("llm_forward")
    return tiny_lm().build_lm_input(c["tts_text"].tolist(), prompt_text_ids=c["prompt_text"].tolist(),
                                    prompt_speech_ids=c["prompt_speech_token"].tolist())


def test_zero_shot_lm_input_layout() -> None:
    c, lm = case("llm_forward"), tiny_lm()
    with torch.no_grad():
        x = zero_shot_input()
        assert x.shape == (1, 1 + 74 + 12 + 1 + 42, 32)
        assert max_diff(x, c["lm_input"]) == 0.0  # embedding gathers: exact
        speech, text = lm.speech_embedding.weight, lm.llm.decoder.embed_tokens.weight
        assert torch.equal(x[0, 0], speech[6561])  # sos
        assert torch.equal(x[0, 1:75], text[c["prompt_text"].long()])
        assert torch.equal(x[0, 75:87], text[c["tts_text"].long()])
        assert torch.equal(x[0, 87], speech[6563])  # task_id
        assert torch.equal(x[0, 88:], speech[c["prompt_speech_token"].long()])


def test_cross_lingual_and_instruct2_layouts() -> None:
    g, lm = case("llm_generate_greedy"), tiny_lm()
    with torch.no_grad():
        # cross-lingual: no prompt text, no prompt speech; every id is tts text
        cross = lm.build_lm_input(g["cross_lingual.llm_text"].tolist())
        assert cross.shape == (1, 43, 32)
        assert max_diff(cross, g["cross_lingual.lm_input"]) == 0.0
        # instruct2: the instruct text (54 ids, up to <|endofprompt|>) takes the prompt-text slot
        ids = g["instruct2.llm_text"].tolist()
        assert ids[53] == 151646
        instruct = lm.build_lm_input(ids[54:], prompt_text_ids=ids[:54])
        assert instruct.shape == (1, 68, 32)
        assert max_diff(instruct, g["instruct2.lm_input"]) == 0.0


def test_hidden_states_logits_and_log_probs() -> None:
    c, lm = case("llm_forward"), tiny_lm()
    with torch.no_grad():
        x = c["lm_input"]
        out = lm.llm.decoder(inputs_embeds=x, output_hidden_states=True)
        hs = out.hidden_states  # [0] inputs, [1] after layer 0, [2] final norm after layer 1
        assert max_diff(hs[0], c["hidden_state_0"]) == 0.0
        assert max_diff(hs[1], c["hidden_state_1"]) <= HIDDEN_ATOL
        assert max_diff(hs[2], c["hidden_final"]) <= HIDDEN_ATOL
        hidden, _ = lm(x)
        assert torch.equal(hidden, hs[2])
        assert max_diff(lm.llm_decoder(hidden[:, -4:]), c["logits_last4"]) <= LOGP_ATOL
        logp, last, cache_ = lm.step(x)
        assert logp.shape == (1, 6761) and logp.dtype == torch.float32
        assert torch.equal(last, hidden[:, -1])
        assert max_diff(logp[0], c["logp_last"]) <= LOGP_ATOL
        assert cache_.get_seq_length() == 130


def test_one_kv_cached_step() -> None:
    c, lm = case("llm_forward"), tiny_lm()
    with torch.no_grad():
        _, _, kv = lm.step(c["lm_input"])
        step1 = c["step1_input"]  # speech_embedding row of the first greedy token
        assert torch.equal(step1, lm.embed_speech([2401]))
        _, last, kv = lm.step(step1, kv)
        assert max_diff(last, c["step1_hidden"]) <= HIDDEN_ATOL
        assert kv.get_seq_length() == 131
        # the cached path equals a full recompute (README: 7.7e-7 there, 2.2e-6 on AVX-512)
        full, _ = lm(torch.cat([c["lm_input"], step1], dim=1))
        assert max_diff(last, full[:, -1]) <= HIDDEN_ATOL


def test_cpu_refuses_half_precision() -> None:
    with pytest.raises(ValueError, match="only supported on CUDA"):
        place(tiny_lm(), torch.device("cpu"), torch.bfloat16)


def test_half_precision_placement_keeps_head_and_rope_fp32() -> None:
    """The GPU layout, dtypes only: placed on the meta device, since CPU refuses bf16."""
    lm = load_llm_files(FIXTURES / "config" / "tiny_llm_config.json",
                        FIXTURES / "weights" / "tiny_llm.safetensors")
    place(lm, torch.device("meta"), torch.bfloat16)
    assert lm.speech_embedding.weight.dtype == torch.bfloat16
    assert lm.llm.decoder.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert lm.llm_decoder.weight.dtype == torch.float32
    rope = lm.llm.decoder.rotary_emb.inv_freq
    assert (rope.device.type, rope.dtype) == ("meta", torch.float32)
    assert lm.llm.model.lm_head.weight is lm.llm.decoder.embed_tokens.weight
