"""CosyVoice3 text front end against the `text_frontend` golden (spec §4; exact everywhere).

Every text of the case with both backends (wetext, and none as upstream runs offline):
the normalised string, the segments, each segment's ids and the raw ids; then the
LLM-visible text of each inference mode.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest

from tests.tts_golden import FIXTURES, case, case_metadata, manifest
from utils.cosyvoice3.text_frontend import (
    TextFrontend,
    bundled_wetext_fst_dir,
    is_only_punctuation,
    reorder_tagged,
    replace_blank,
    select_backend,
    split_paragraph,
)
from utils.cosyvoice3.text_inputs import (
    LlmText,
    Mode,
    cross_lingual,
    cross_lingual_tts_text,
    instruct2,
    instruct_text,
    sft,
    zero_shot,
    zero_shot_prompt_text,
)
from utils.cosyvoice3.tokenizer import ENDOFPROMPT_ID, SPECIAL_TOKENS, CosyVoice3Tokenizer

TOKENIZER_DIR = FIXTURES / "tokenizer"
BACKENDS: dict[str, Literal["wetext", ""]] = {"wetext": "wetext", "none": ""}  # golden name -> ours


def _facts() -> dict[str, Any]:
    return dict(manifest()["facts"]["text_frontend"])


TEXTS: dict[str, dict[str, Any]] = _facts()["texts"]


@pytest.fixture(scope="module")
def tokenizer() -> CosyVoice3Tokenizer:
    return CosyVoice3Tokenizer.from_dir(TOKENIZER_DIR)


@pytest.fixture(scope="module")
def frontends(tokenizer: CosyVoice3Tokenizer) -> dict[str, TextFrontend]:
    return {name: TextFrontend(tokenizer, backend=b) for name, b in BACKENDS.items()}


def _ids(key: str) -> list[int]:
    return [int(i) for i in case("text_frontend")[key].tolist()]


def test_case_notes_match_manifest() -> None:
    # the safetensors header carries the same notes the manifest summarises
    notes = json.loads(case_metadata("text_frontend")["notes"])
    assert notes["texts"] == TEXTS
    assert notes["mode_inputs"] == _facts()["mode_inputs"]


# --- tokenizer --------------------------------------------------------------------------------


def test_special_token_ids_match_upstream(tokenizer: CosyVoice3Tokenizer) -> None:
    table = json.loads((TOKENIZER_DIR / "cosyvoice3_special_token_ids.json").read_text(encoding="utf-8"))
    assert tokenizer.special_token_ids() == table["ids"]
    assert len(SPECIAL_TOKENS) == 280
    assert tokenizer.endofprompt_id == ENDOFPROMPT_ID == 151646
    assert max(table["ids"].values()) == 151923 < 151936


def test_specials_match_inside_words_and_decode_drops_them(tokenizer: CosyVoice3Tokenizer) -> None:
    ids = tokenizer.encode("x[j][ǐ]<|endofprompt|>y")
    assert ids[1:4] == [tokenizer.token_id("[j]"), tokenizer.token_id("[ǐ]"), ENDOFPROMPT_ID]
    assert tokenizer.decode(ids) == "xy"
    assert tokenizer.encode("") == []


def test_base_vocabulary_too_large_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        CosyVoice3Tokenizer.from_dir(TOKENIZER_DIR, embedding_rows=151900)


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_raw_ids(tokenizer: CosyVoice3Tokenizer, name: str) -> None:
    assert tokenizer.encode(TEXTS[name]["input"]) == _ids(f"{name}.raw_ids")


# --- normalisation and splitting ---------------------------------------------------------------


def test_backends(frontends: dict[str, TextFrontend]) -> None:
    assert bundled_wetext_fst_dir() is not None, "wetext 0.1.8 (bundled FSTs) is not installed"
    assert frontends["wetext"].backend == "wetext"
    assert frontends["none"].backend == ""


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("name", sorted(TEXTS))
def test_normalise_and_split(
    frontends: dict[str, TextFrontend], tokenizer: CosyVoice3Tokenizer, name: str, backend: str
) -> None:
    frontend, want = frontends[backend], TEXTS[name][backend]
    text = TEXTS[name]["input"]
    assert frontend.text_normalize(text, split=False) == want["split_false"]
    segments = frontend.text_normalize(text, split=True)
    assert segments == want["segments"]
    ids = [tokenizer.encode(s) for s in segments]
    assert [len(i) for i in ids] == want["segment_token_counts"]
    for k, seg_ids in enumerate(ids):
        assert seg_ids == _ids(f"{name}.{backend}.seg{k}")
    assert f"{name}.{backend}.seg{len(ids)}" not in case("text_frontend")


def test_text_frontend_false_and_generators_pass_through(frontends: dict[str, TextFrontend]) -> None:
    fe = frontends["wetext"]
    assert fe.text_normalize(" 12 ", split=True, text_frontend=False) == [" 12 "]
    assert fe.text_normalize(" 12 ", split=False, text_frontend=False) == " 12 "
    assert fe.text_normalize("", split=True) == [""]
    chunks = iter(["a", "b"])
    assert fe.text_normalize(chunks) == [chunks]


def test_replace_blank_rules() -> None:
    assert replace_blank("Hi, 你好 ok go") == "Hi,你好ok go"
    assert replace_blank("行 - 测") == "行-测"
    assert replace_blank(" a ") == "a"


def test_split_paragraph_rules() -> None:
    # quotes follow their sentence end; a missing end is added; short tails merge back
    assert split_paragraph("他说“好。”然后走了", "zh", len) == ["他说“好。”然后走了。"]
    short_tail = "一" * 70 + "。" + "二" * 15 + "。"
    assert split_paragraph(short_tail, "zh", len) == [short_tail]  # a 16-char tail merges back
    three = "一" * 70 + "。" + "二" * 30 + "。" + "三" * 5 + "。"
    assert split_paragraph(three, "zh", len) == ["一" * 70 + "。", "二" * 30 + "。" + "三" * 5 + "。"]
    assert split_paragraph("a. b", "en", len, comma_split=False) == ["a. b."]
    assert split_paragraph("", "en", len) == []


def test_only_punctuation() -> None:
    assert is_only_punctuation("") and is_only_punctuation("。…$")
    assert not is_only_punctuation("Hi! .")


def test_wetext_without_a_path_keeps_the_text(frontends: dict[str, TextFrontend]) -> None:
    # the en tagger has no path through a double space; upstream would fail, we keep the text
    assert frontends["wetext"].text_normalize("3  spaces", split=False) == "three  spaces"
    assert frontends["wetext"].text_normalize("no digits  here", split=False) == "no digits  here"


def test_wetext_reorder_and_explicit_backend_failure(tmp_path: Any) -> None:
    tagged = 'money { currency: "$" value: "12" } char { value: "x" }'
    assert reorder_tagged(tagged, "zh") == 'money { value: "12" currency: "$" } char { value: "x" }'
    kept = 'date { day: "1" preserve_order: "true" year: "2" }'
    assert reorder_tagged(kept, "en") == kept
    with pytest.raises(FileNotFoundError):
        select_backend("wetext", fst_dir=tmp_path)
    assert select_backend("auto", fst_dir=tmp_path) is None


# --- LLM-visible text per mode -----------------------------------------------------------------


MODE_INPUTS: dict[str, str] = _facts()["mode_inputs"]
MODES: dict[str, dict[str, Any]] = _facts()["modes"]


def _mode_runs(frontend: TextFrontend, mode: str) -> list[LlmText]:
    tts, prompt, instruct = MODE_INPUTS["tts_text"], MODE_INPUTS["prompt_text"], MODE_INPUTS["instruct_text"]
    if mode == "zero_shot":
        return zero_shot(frontend, tts, prompt)
    if mode == "cross_lingual":
        return cross_lingual(frontend, MODE_INPUTS["cross_lingual_tts_text"])
    assert mode == "instruct2"
    return instruct2(frontend, tts, instruct)


def test_example_prompt_builders() -> None:
    assert zero_shot_prompt_text("希望你以后能够做的比我还好呦。") == MODE_INPUTS["prompt_text"]
    assert cross_lingual_tts_text(MODE_INPUTS["normalized_tts_text"]) == MODE_INPUTS["cross_lingual_tts_text"]
    assert instruct_text("请用广东话表达。") == MODE_INPUTS["instruct_text"]


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("mode", sorted(MODES))
def test_llm_text_per_mode(frontends: dict[str, TextFrontend], mode: str, backend: str) -> None:
    runs = _mode_runs(frontends[backend], mode)
    assert len(runs) == 1  # the golden text is one segment
    run, want = runs[0], MODES[mode]
    assert run.mode == Mode(mode)
    assert list(run.text_ids) == _ids(f"mode.{mode}.text")
    assert list(run.prompt_ids) == _ids(f"mode.{mode}.prompt_text")
    assert list(run.llm_ids) == _ids(f"mode.{mode}.llm_text")
    assert len(run.llm_ids) == want["llm_text_len"] and len(run.text_ids) == want["tts_text_len"]
    assert run.length_bounds() == (want["min_len"], want["max_len"])
    assert run.has_endofprompt() is want["endofprompt_151646_in_llm_text"]
    if "prompt_text" in want["shapes"]:
        assert [1, len(run.prompt_ids)] == want["shapes"]["prompt_text"]
    assert [1, len(run.text_ids)] == want["shapes"]["text"]
    if mode != "cross_lingual":
        assert run.segment == MODE_INPUTS["normalized_tts_text"]


def test_sft_and_unnormalised_prompt(frontends: dict[str, TextFrontend]) -> None:
    fe = frontends["wetext"]
    (run,) = sft(fe, MODE_INPUTS["tts_text"])
    assert list(run.llm_ids) == _ids("mode.zero_shot.text") and run.prompt_ids == ()
    # a cached speaker's prompt is not normalised: digits survive
    (cached,) = zero_shot(fe, MODE_INPUTS["tts_text"], "今天25度。", normalize_prompt=False)
    assert fe.tokenizer.encode("今天25度。") == list(cached.prompt_ids)
    (normalised,) = zero_shot(fe, MODE_INPUTS["tts_text"], "今天25度。")
    assert normalised.prompt_ids == tuple(fe.tokenizer.encode("今天二十五度。"))


def test_e2e_case_text_ids_are_the_zero_shot_ones(frontends: dict[str, TextFrontend]) -> None:
    # e2e_zero_shot ran inference_zero_shot on the same texts; its text tensors are ours too
    e2e = case("e2e_zero_shot")
    (run,) = _mode_runs(frontends["wetext"], "zero_shot")
    assert e2e["tts_text"].tolist() == list(run.text_ids)
    assert e2e["prompt_text"].tolist() == list(run.prompt_ids)
