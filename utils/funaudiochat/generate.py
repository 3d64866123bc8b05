"""Command line: run one generation turn of a conversation and print the steps as JSON.

    python -m utils.funaudiochat.generate --model-path DIR [--tokenizer-path DIR] \
        --conversation CONV.json --mode s2s|s2t --max-steps N [--temperature T --top-p P \
        --top-k K --repetition-penalty R --seed S] --device cpu --dtype float32

CONV.json: {"system": "...", "turns": [{"user_audio": "a.wav"}, {"assistant_text": "..."},
{"user_audio": "b.wav"}]}. Audio paths are relative to the JSON file; the last turn is the one
generated. WAVs are resampled to 16 kHz mono if needed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr
import torch

from .frontend import SAMPLE_RATE
from .generation import stream_turn
from .loading import load_model
from .sampling import SamplingParams
from .session import ConversationState, UserTurn

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def read_audio(path: Path) -> np.ndarray:
    """Mono float32 at 16 kHz."""
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    return mono if sr == SAMPLE_RATE else soxr.resample(mono, sr, SAMPLE_RATE).astype(np.float32)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = SamplingParams()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True, type=Path)
    p.add_argument("--tokenizer-path", type=Path)
    p.add_argument("--conversation", required=True, type=Path)
    p.add_argument("--mode", choices=["s2s", "s2t"], default="s2s")
    p.add_argument("--max-steps", type=int, default=defaults.max_steps)
    p.add_argument("--temperature", type=float, default=defaults.temperature)
    p.add_argument("--top-p", type=float, default=defaults.top_p)
    p.add_argument("--top-k", type=int, default=defaults.top_k)
    p.add_argument("--repetition-penalty", type=float, default=defaults.repetition_penalty)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None)
    return p.parse_args(argv)


def build_state(runtime, conv: dict[str, Any], base: Path,
                speech: bool) -> tuple[ConversationState, UserTurn]:
    turns = conv.get("turns") or []
    if not turns or "user_audio" not in turns[-1]:
        raise ValueError("the last turn of the conversation must be a user_audio turn")
    state = ConversationState(system_prompt=conv.get("system"))
    for t in turns[:-1]:
        if "user_audio" in t:
            state.add_user_message(runtime, UserTurn(audio=read_audio(base / t["user_audio"])), speech=speech)
        elif "assistant_text" in t:
            state.add_assistant_message(t["assistant_text"])
        else:
            raise ValueError(f"unknown turn {t!r}")
    return state, UserTurn(audio=read_audio(base / turns[-1]["user_audio"]))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    runtime = load_model(
        args.model_path, tokenizer_path=args.tokenizer_path, device=args.device,
        dtype=DTYPES[args.dtype] if args.dtype else None,
    )
    params = SamplingParams(
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        repetition_penalty=args.repetition_penalty, max_steps=args.max_steps, seed=args.seed,
    )
    conv = json.loads(args.conversation.read_text())
    state, turn = build_state(runtime, conv, args.conversation.parent, args.mode == "s2s")
    steps = list(stream_turn(runtime, state, turn, params, mode=args.mode))
    out = {
        "step_text_tokens": [s.text_token for s in steps],
        "step_speech_tokens": [s.speech_tokens for s in steps],
        "text": "".join(s.text_piece for s in steps),
    }
    json.dump(out, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
