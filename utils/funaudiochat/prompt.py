"""Prompt building: ChatML rendering, ``<|AUDIO|>`` expansion and assistant-text cleanup."""

from __future__ import annotations

import re
from dataclasses import dataclass

AUDIO_TOKEN = "<|AUDIO|>"
AUDIO_BOS = "<|audio_bos|>"
AUDIO_EOS = "<|audio_eos|>"
SIL = "<|sil|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# what upstream puts in a user message that carries audio
AUDIO_TEMPLATE = f"{AUDIO_BOS}{AUDIO_TOKEN}{AUDIO_EOS}"

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
S2T_SYSTEM_PROMPT = "You are asked to generate text tokens."
S2M_SYSTEM_PROMPT = "You are asked to generate both text and speech tokens at the same time."
# upstream's SPOKEN_S2M_PROMPT (server and infer_s2s.py): the S2M prompt plus a persona
SPOKEN_S2M_SYSTEM_PROMPT = (
    S2M_SYSTEM_PROMPT + " 你的名字是小云。你是一位来自杭州的温柔友善的女孩，声音甜美，举止亲切。"
    "你的回复语气自然友好，力求沟通简洁明了。你的回复简短，通常只有一到三句话，避免使用正式的称谓和重复的短语。"
    "你能用恰当的声音回复，遵循用户的指示，并能共情他们的情绪。你能用恰当的方言回复，会说四川话和粤语。"
)


@dataclass(frozen=True)
class TokenIds:
    """Special text-token ids the runtime acts on (Qwen3 + Fun-Audio-Chat additions)."""

    pad: int = 151643  # <|endoftext|>
    im_end: int = 151645  # generation stop
    audio: int = 151669
    audio_bos: int = 151670
    audio_eos: int = 151671
    sil: int = 151673


def render_chat(messages: list[tuple[str, str]], *, add_generation_prompt: bool = True) -> str:
    """ChatML as upstream's processor default template renders (role, content) pairs."""
    if not messages or messages[0][0] != "system":
        messages = [("system", DEFAULT_SYSTEM_PROMPT), *messages]
    text = "".join(f"{IM_START}{role}\n{content}{IM_END}\n" for role, content in messages)
    return text + f"{IM_START}assistant\n" if add_generation_prompt else text


def expand_audio(text: str, counts: list[int]) -> str:
    """Replace the k-th ``<|AUDIO|>`` with ``counts[k]`` copies, adding bos/eos around the run
    when the placeholder was not already wrapped."""
    parts = text.split(AUDIO_TOKEN)
    if len(parts) - 1 != len(counts):
        raise ValueError(f"prompt has {len(parts) - 1} {AUDIO_TOKEN} placeholders but {len(counts)} audios")
    out = [parts[0]]
    for k, count in enumerate(counts):
        run = AUDIO_TOKEN * count
        if not (parts[k].endswith(AUDIO_BOS) or parts[k + 1].startswith(AUDIO_EOS)):
            run = f"{AUDIO_BOS}{run}{AUDIO_EOS}"
        out += [run, parts[k + 1]]
    return "".join(out)


_LEADING = re.compile(rf"^(?:{re.escape(AUDIO_BOS)}|{re.escape(SIL)})+")
_TRAILING = re.compile(rf"(?:{re.escape(AUDIO_EOS)}|{re.escape(SIL)}|{re.escape(IM_END)})+$")


def clean_assistant_text(decoded: str) -> str:
    """History text as upstream's server keeps it: generated text (specials included) without
    leading bos/sil runs and trailing eos/sil/im_end runs."""
    return _TRAILING.sub("", _LEADING.sub("", decoded))
