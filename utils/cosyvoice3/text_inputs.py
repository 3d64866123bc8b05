"""The text ids the CosyVoice3 LLM sees in each inference mode (spec §4.5, §6).

The LLM input is `[sos | prompt_text ids | text ids | task_id | prompt speech]`; this module
makes the two text parts, one `LlmText` per normalised tts segment (each segment is one LLM
run with the same prompt). What gets normalised follows upstream 2db78e7:
- zero-shot: prompt_text goes through `text_normalize(split=False)` (a no-op once it holds
  `<|endofprompt|>`), tts_text is normalised and split;
- cross-lingual: tts_text only, normalised and split (skipped when it holds `<|...|>`);
- instruct2: instruct_text is never normalised, tts_text is;
- sft: tts_text only.
CosyVoice3 was trained with a system prefix ending in `<|endofprompt|>`; 2db78e7 does not
check for it, HEAD asserts it (`LlmText.has_endofprompt`). The helpers below build upstream's
example prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .text_frontend import TextFrontend
from .tokenizer import ENDOFPROMPT, ENDOFPROMPT_ID

SYSTEM_PROMPT = "You are a helpful assistant."

# The stock instructions of upstream's `instruct_list` (cosyvoice/utils/common.py), without
# the system prefix and `<|endofprompt|>` that `instruct_text` adds.
STOCK_INSTRUCTIONS: tuple[str, ...] = (
    *(f"请用{place}话表达。" for place in (
        "广东", "东北", "甘肃", "贵州", "河南", "湖北", "湖南", "江西", "闽南", "宁夏", "山西", "陕西",
        "山东", "上海", "四川", "天津", "云南",
    )),
    "Please say a sentence as loudly as possible.",
    "Please say a sentence in a very soft voice.",
    "请用尽可能慢地语速说一句话。",
    "请用尽可能快地语速说一句话。",
    "请非常开心地说一句话。",
    "请非常伤心地说一句话。",
    "请非常生气地说一句话。",
    "我想体验一下小猪佩奇风格，可以吗？",
    "你可以尝试用机器人的方式解答吗？",
)


class Mode(StrEnum):
    ZERO_SHOT = "zero_shot"
    CROSS_LINGUAL = "cross_lingual"
    INSTRUCT2 = "instruct2"
    SFT = "sft"


def zero_shot_prompt_text(transcript: str) -> str:
    """Zero-shot `prompt_text` in upstream's form: system prefix, `<|endofprompt|>`, transcript."""
    return f"{SYSTEM_PROMPT}{ENDOFPROMPT}{transcript}"


def cross_lingual_tts_text(text: str) -> str:
    """Cross-lingual / fine-grained tts_text: the system prefix rides on the text itself.

    The `<|endofprompt|>` also switches normalisation and splitting off for the whole text.
    """
    return f"{SYSTEM_PROMPT}{ENDOFPROMPT}{text}"


def instruct_text(instruction: str) -> str:
    """instruct2 `instruct_text`: `"You are a helpful assistant. <instruction><|endofprompt|>"`."""
    return f"{SYSTEM_PROMPT} {instruction}{ENDOFPROMPT}"


def with_system_prompt(mode: Mode | str, text: str, prompt_text: str | None,
                       instruct: str | None) -> tuple[str, str | None, str | None]:
    """(text, prompt_text, instruct) with upstream's example system prefix and
    `<|endofprompt|>` where the caller gave none: the prompt text of zero_shot, the instruct
    of instruct2 and, for cross_lingual, the text itself (which turns off its normalisation
    and splitting, as upstream's example does)."""
    if prompt_text and ENDOFPROMPT not in prompt_text:
        prompt_text = zero_shot_prompt_text(prompt_text)
    if instruct and ENDOFPROMPT not in instruct:
        instruct = instruct_text(instruct)
    if Mode(mode) is Mode.CROSS_LINGUAL and ENDOFPROMPT not in text:
        text = cross_lingual_tts_text(text)
    return text, prompt_text, instruct


@dataclass(frozen=True)
class LlmText:
    """The text side of one LLM run: what precedes task_id in the LLM input."""

    mode: Mode
    segment: str  # the (normalised) tts segment, as tokenised
    prompt_ids: tuple[int, ...]  # zero-shot prompt_text or instruct2 instruct_text; () otherwise
    text_ids: tuple[int, ...]  # the segment's ids

    @property
    def llm_ids(self) -> tuple[int, ...]:
        """prompt ids then segment ids, in LLM input order."""
        return self.prompt_ids + self.text_ids

    def length_bounds(self, *, min_ratio: float = 2, max_ratio: float = 20) -> tuple[int, int]:
        """(min_len, max_len) of the speech tokens; counted on the segment ids only (spec §6)."""
        n = len(self.text_ids)
        return int(n * min_ratio), int(n * max_ratio)

    def has_endofprompt(self, endofprompt_id: int = ENDOFPROMPT_ID) -> bool:
        return endofprompt_id in self.llm_ids


def _runs(frontend: TextFrontend, mode: Mode, tts_text: str, prompt_ids: tuple[int, ...],
          text_frontend: bool) -> list[LlmText]:
    encode = frontend.tokenizer.encode
    return [
        LlmText(mode, segment, prompt_ids, tuple(encode(segment)))
        for segment in frontend.text_normalize(tts_text, split=True, text_frontend=text_frontend)
    ]


def zero_shot(frontend: TextFrontend, tts_text: str, prompt_text: str, *, text_frontend: bool = True,
              normalize_prompt: bool = True) -> list[LlmText]:
    """`inference_zero_shot`: prompt_text ⧺ segment.

    `normalize_prompt=False` is what a cached speaker (`add_zero_shot_spk`) got upstream.
    """
    if normalize_prompt:
        prompt_text = frontend.text_normalize(prompt_text, split=False, text_frontend=text_frontend)
    prompt_ids = tuple(frontend.tokenizer.encode(prompt_text))
    return _runs(frontend, Mode.ZERO_SHOT, tts_text, prompt_ids, text_frontend)


def cross_lingual(frontend: TextFrontend, tts_text: str, *, text_frontend: bool = True) -> list[LlmText]:
    """`inference_cross_lingual`: the segment alone (no prompt text, no prompt speech)."""
    return _runs(frontend, Mode.CROSS_LINGUAL, tts_text, (), text_frontend)


def instruct2(frontend: TextFrontend, tts_text: str, instruct: str, *,
              text_frontend: bool = True) -> list[LlmText]:
    """`inference_instruct2`: instruct_text (never normalised) ⧺ segment; no prompt speech."""
    prompt_ids = tuple(frontend.tokenizer.encode(instruct))
    return _runs(frontend, Mode.INSTRUCT2, tts_text, prompt_ids, text_frontend)


def sft(frontend: TextFrontend, tts_text: str, *, text_frontend: bool = True) -> list[LlmText]:
    """`inference_sft`: the segment alone (speaker from spk2info, no prompt)."""
    return _runs(frontend, Mode.SFT, tts_text, (), text_frontend)
