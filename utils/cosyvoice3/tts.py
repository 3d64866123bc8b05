"""Command line: CosyVoice3 text -> 24 kHz wav (the library is synthesizer.py).

    python -m utils.cosyvoice3.tts --model-dir DIR --text "..." \\
        --mode zero_shot|cross_lingual|instruct2|sft \\
        [--prompt-wav W --prompt-text T | --speaker S] [--instruct "..."] [--seed N] \\
        [--stream [--schedule cached|upstream]] --out OUT.wav [--save-speaker SPK.safetensors]

`--speaker` is a speaker id shipped in the model's spk2info.pt or a saved speaker file.
CosyVoice3 expects its system prefix ending in `<|endofprompt|>`; when the prompt text, the
instruct text or (cross_lingual) the text lacks it, upstream's example prefix is added
(`--raw-prompt` passes them unchanged).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from .speakers import Speaker, save_speaker
from .synthesizer import CosyVoice3Tts
from .text_inputs import Mode, with_system_prompt
from .tts_token2wav import Schedule

logger = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True, type=Path)
    p.add_argument("--text", required=True)
    p.add_argument("--mode", choices=[m.value for m in Mode], default=Mode.ZERO_SHOT.value)
    p.add_argument("--prompt-wav", type=Path)
    p.add_argument("--prompt-text", help="transcript of --prompt-wav (zero_shot)")
    p.add_argument("--speaker", help="spk2info id or saved speaker file (instead of --prompt-wav)")
    p.add_argument("--instruct", help="instruction for instruct2, e.g. 请用广东话表达。")
    p.add_argument("--seed", type=int)
    p.add_argument("--stream", action="store_true", help="stream tokens into token2wav as they are sampled")
    p.add_argument("--schedule", choices=[s.value for s in Schedule], default=Schedule.CACHED.value)
    p.add_argument("--raw-prompt", action="store_true", help="do not add the system prefix")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--save-speaker", type=Path, help="write the prompt as a speaker file")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    args = p.parse_args(argv)
    if (args.prompt_wav is None) == (args.speaker is None):
        p.error("give exactly one of --prompt-wav and --speaker")
    if args.mode == Mode.ZERO_SHOT and args.prompt_wav is not None and not args.prompt_text:
        p.error("zero_shot with --prompt-wav needs --prompt-text")
    if args.mode == Mode.INSTRUCT2 and not args.instruct:
        p.error("instruct2 needs --instruct")
    return args


def _prefixed(args: argparse.Namespace) -> tuple[str, str | None, str | None]:
    """(text, prompt_text, instruct) with upstream's example system prefix where missing."""
    if args.raw_prompt:
        return args.text, args.prompt_text, args.instruct
    return with_system_prompt(args.mode, args.text, args.prompt_text, args.instruct)


def _speaker(tts: CosyVoice3Tts, args: argparse.Namespace, prompt_text: str | None) -> Speaker:
    if args.speaker is not None:
        return tts.speaker(args.speaker)
    return tts.make_speaker(args.prompt_wav, prompt_text)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    text, prompt_text, instruct = _prefixed(args)
    tts = CosyVoice3Tts.from_model_dir(args.model_dir, device=args.device)
    speaker = _speaker(tts, args, prompt_text)
    if args.save_speaker:
        save_speaker(args.save_speaker, speaker)
        logger.info("saved speaker to %s", args.save_speaker)
    start = time.perf_counter()
    first: float | None = None
    if args.stream:
        chunks = []
        stream = tts.stream(text, args.mode, speaker, instruct=instruct, seed=args.seed,
                            schedule=args.schedule)
        for chunk in stream:
            first = time.perf_counter() - start if first is None else first
            chunks.append(chunk)
        pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    else:
        pcm = tts.synthesize(text, args.mode, speaker, instruct=instruct, seed=args.seed)
    elapsed = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(args.out, pcm, tts.sample_rate, subtype="FLOAT")
    seconds = pcm.size / tts.sample_rate
    latency = f", first chunk after {first:.2f} s" if first is not None else ""
    logger.info("%.2f s of audio in %.2f s (RTF %.3f%s) -> %s", seconds, elapsed,
                elapsed / max(seconds, 1e-9), latency, args.out)


if __name__ == "__main__":
    main()
