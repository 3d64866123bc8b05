"""Command line: CosyVoice3 speech tokens -> 24 kHz wav, through one streaming session.

    python -m utils.cosyvoice3.token2wav --model-dir DIR --tokens TOKENS.json \
        [--speaker-embedding EMB.npy | --speaker ID] --mode cached --out OUT.wav \
        [--chunks-json CHUNKS.json]

Tokens are pushed `--push-size` at a time (default 1, as an LLM emits them), then the
stream is finalized. `--chunks-json` records the sample count of every emitted chunk.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from .streaming import StreamMode, Token2Wav

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True, type=Path)
    p.add_argument("--tokens", required=True, type=Path, help="JSON list of speech token ids (0..6560)")
    p.add_argument("--speaker-embedding", type=Path, help=".npy with 192 floats")
    p.add_argument("--speaker", help="speaker id in the model directory's spk2info.pt")
    p.add_argument("--mode", choices=[m.value for m in StreamMode], default=StreamMode.CACHED.value)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--chunks-json", type=Path)
    p.add_argument("--push-size", type=int, default=1, help="tokens per push() call")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="float32")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--left-chunks", type=int, help="override num_decoding_left_chunks (-1: all, as released)")
    args = p.parse_args(argv)
    if args.push_size < 1:
        p.error("--push-size must be >= 1")
    return args


def _read_tokens(path: Path) -> list[int]:
    tokens = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
        raise ValueError(f"{path}: expected a JSON list of ints")
    return tokens


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    tokens = _read_tokens(args.tokens)
    model = Token2Wav.from_model_dir(args.model_dir, device=args.device, dtype=_DTYPES[args.dtype],
                                     left_chunks=args.left_chunks)
    embedding = np.load(args.speaker_embedding) if args.speaker_embedding else None
    stream = model.new_stream(args.mode, embedding=embedding, speaker=args.speaker)
    chunks: list[np.ndarray] = []
    start = time.perf_counter()
    for i in range(0, len(tokens), args.push_size):
        chunks.append(stream.push(tokens[i:i + args.push_size]))
    chunks.append(stream.finalize())
    elapsed = time.perf_counter() - start
    chunks = [c for c in chunks if c.size]
    pcm_24k = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(args.out, pcm_24k, model.sample_rate, subtype="FLOAT")
    if args.chunks_json:
        args.chunks_json.write_text(json.dumps({
            "mode": args.mode,
            "sample_rate": model.sample_rate,
            "chunk_samples": [int(c.size) for c in chunks],
            "total_samples": int(pcm_24k.size),
        }, indent=1))
    seconds = pcm_24k.size / model.sample_rate
    logger.info("%d tokens -> %.2f s of audio in %d chunks, %.2f s compute (RTF %.3f)",
                len(tokens), seconds, len(chunks), elapsed, elapsed / max(seconds, 1e-9))


if __name__ == "__main__":
    main()
