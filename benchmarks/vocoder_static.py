"""Batched token2wav, eager vs static shapes (vs CUDA graphs): N cached streams side by side.

Each of N replies (``--reply-s`` of random speech tokens) is fed ``--step-tokens`` per round to
one ``advance`` call for all streams, then finalized, three ways:

- eager: ``BatchedToken2Wav`` (unpadded rows, per-length attention groups);
- static: ``StaticToken2Wav`` (rows padded to a bucket, preallocated key/value stores, masked
  attention over a span bucket), run eagerly: on the CPU this shows what the padding costs;
- graphs (``--cuda-graphs``, CUDA only): the same, each shape key captured once and replayed.

Every variant runs the whole workload once to warm up (allocations, graph captures), then once
timed with fresh streams. tokens/s is the speech tokens all streams turned into audio per
compute second; RTF is compute / one reply's audio seconds (< 1: all N keep real time);
max_diff is the largest sample difference from eager. ``--stagger`` starts stream i i rounds
late, so rows of one call sit at different points of their replies.

    python benchmarks/vocoder_static.py                        # tiny golden model, CPU
    python benchmarks/vocoder_static.py --full-size-random --device cuda --dtype float16 --cuda-graphs

Prints a table and writes JSON under benchmarks/results/ (gitignored).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from utils.cosyvoice3.batched_stream import BatchedToken2Wav, StreamWork
from utils.cosyvoice3.config import flow_config_from_tree, hift_config_from_tree, load_json_tree
from utils.cosyvoice3.loading import build_modules, place
from utils.cosyvoice3.noise import build_noise
from utils.cosyvoice3.static_flow import StaticVocoderConfig
from utils.cosyvoice3.static_token2wav import StaticToken2Wav
from utils.cosyvoice3.streaming import Token2Wav

logger = logging.getLogger("vocoder_static")

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "cosyvoice3"
TOKEN_RATE = 25  # speech tokens per second of audio
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

VocoderFactory = Callable[[Token2Wav], BatchedToken2Wav]


def load_model(args: argparse.Namespace) -> Token2Wav:
    dtype, device = DTYPES[args.dtype], torch.device(args.device)
    if not args.full_size_random:
        return Token2Wav.from_model_dir(args.model_dir, device=device, dtype=dtype)
    flow_cfg = flow_config_from_tree(load_json_tree(FIXTURES / "config" / "real_flow_config.json"))
    hift_cfg = hift_config_from_tree(load_json_tree(FIXTURES / "config" / "real_hift_config.json"))
    flow, hift = build_modules(flow_cfg, hift_cfg, build_noise(flow_cfg, hift_cfg))
    hift.fold_weight_norm()
    place(flow, hift, device, dtype)
    return Token2Wav(flow, hift)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_workload(model: Token2Wav, vocoder: BatchedToken2Wav, n_streams: int, n_tokens: int,
                 step: int, stagger: bool) -> tuple[float, list[np.ndarray]]:
    """Seconds to turn n_streams replies into audio through ``vocoder``, and each one's PCM."""
    rng = np.random.default_rng(0)
    replies = [rng.integers(0, 6561, n_tokens).tolist() for _ in range(n_streams)]
    embeddings = [rng.standard_normal(192).astype(np.float32) for _ in range(n_streams)]
    streams = [model.new_stream("cached", embedding=e) for e in embeddings]
    pcm: list[list[np.ndarray]] = [[] for _ in range(n_streams)]
    rounds = -(-n_tokens // step)
    sync(model.device)
    start = time.perf_counter()
    for rnd in range(rounds + (n_streams - 1 if stagger else 0)):
        work, who = [], []
        for i, stream in enumerate(streams):
            k = rnd - (i if stagger else 0)
            if 0 <= k < rounds:
                work.append(StreamWork(stream, replies[i][k * step:(k + 1) * step], finalize=k == rounds - 1))
                who.append(i)
        for i, out in zip(who, vocoder.advance(work), strict=True):
            if isinstance(out, Exception):
                raise out
            pcm[i].append(out)
    sync(model.device)
    return time.perf_counter() - start, [np.concatenate(p) for p in pcm]


def static_config(n_streams: int, n_tokens: int, cuda_graphs: bool) -> StaticVocoderConfig:
    """Buckets up to n_streams and stores that hold a whole reply (no growth while timed)."""
    buckets = tuple(sorted({b for b in StaticVocoderConfig().batch_buckets if b < n_streams} | {n_streams}))
    frames = 100 * -(-2 * n_tokens // 100)
    return StaticVocoderConfig(batch_buckets=buckets, max_streams=n_streams, max_frames=frames,
                               min_span=min(100, frames), cuda_graphs=cuda_graphs)


def static_vocoder(n_streams: int, n_tokens: int, *, cuda_graphs: bool) -> VocoderFactory:
    config = static_config(n_streams, n_tokens, cuda_graphs)
    return lambda model: StaticToken2Wav(model, config=config)


def run(model: Token2Wav, sizes: list[int], reply_s: float, step: int, stagger: bool,
        cuda_graphs: bool) -> list[dict[str, float]]:
    n_tokens = int(reply_s * TOKEN_RATE)
    rows = []
    for n in sizes:
        variants: dict[str, VocoderFactory] = {"eager": BatchedToken2Wav,
                                               "static": static_vocoder(n, n_tokens, cuda_graphs=False)}
        if cuda_graphs:
            variants["graphs"] = static_vocoder(n, n_tokens, cuda_graphs=True)
        row: dict[str, float] = {"streams": n}
        reference: list[np.ndarray] = []
        for name, make in variants.items():
            vocoder = make(model)
            run_workload(model, vocoder, n, n_tokens, step, stagger)  # warm-up: allocations, captures
            seconds, pcm = run_workload(model, vocoder, n, n_tokens, step, stagger)
            reference = reference or pcm
            row[f"{name}_tokens_per_s"] = n * n_tokens / seconds
            row[f"{name}_rtf"] = seconds / reply_s
            row[f"{name}_max_diff"] = max(float(np.abs(a - b).max()) for a, b in zip(pcm, reference))
        logger.info("%d streams done", n)
        rows.append(row)
    return rows


def table(rows: list[dict[str, float]], variants: Sequence[str]) -> str:
    """Eager first, then each variant with its speed relative to eager and its largest difference."""
    head = f"{'N':>3} | {'eager tok/s':>11} | {'eager RTF':>9}"
    head += "".join(f" | {v + ' tok/s':>12} | {v + ' RTF':>10} | {'vs eager':>8} | {'max_diff':>8}"
                    for v in variants)
    lines = [head, "-" * len(head)]
    for r in rows:
        line = f"{r['streams']:>3} | {r['eager_tokens_per_s']:>11.1f} | {r['eager_rtf']:>9.3f}"
        for v in variants:
            ratio = r[f"{v}_tokens_per_s"] / r["eager_tokens_per_s"]
            line += (f" | {r[f'{v}_tokens_per_s']:>12.1f} | {r[f'{v}_rtf']:>10.3f} | {ratio:>7.2f}x"
                     f" | {r[f'{v}_max_diff']:>8.1e}")
        lines.append(line)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=FIXTURES / "tiny_model")
    p.add_argument("--full-size-random", action="store_true", help="real-size configs, random weights")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--streams", default="1,4,8,16", help="comma-separated stream counts")
    p.add_argument("--reply-s", type=float, default=6.0, help="each reply's length in seconds")
    p.add_argument("--step-tokens", type=int, default=25, help="tokens per stream per round")
    p.add_argument("--stagger", action="store_true", help="stream i starts i rounds late")
    p.add_argument("--cuda-graphs", action="store_true", help="also time the static path as CUDA graphs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(args.threads)
    if args.cuda_graphs and not args.device.startswith("cuda"):
        p.error("--cuda-graphs needs --device cuda")
    model = load_model(args)
    sizes = [int(x) for x in args.streams.split(",")]
    with torch.inference_mode():
        rows = run(model, sizes, args.reply_s, args.step_tokens, args.stagger, args.cuda_graphs)
    variants = ["static", "graphs"] if args.cuda_graphs else ["static"]
    print(table(rows, variants))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"vocoder_static_{'full_random' if args.full_size_random else 'tiny'}_{args.device}_{stamp}.json"
    meta = {"device": args.device, "dtype": args.dtype, "threads": args.threads, "reply_s": args.reply_s,
            "step_tokens": args.step_tokens, "stagger": args.stagger, "torch": torch.__version__,
            "model": "full-size random" if args.full_size_random else str(args.model_dir), "results": rows}
    (args.out_dir / name).write_text(json.dumps(meta, indent=2))
    logger.info("wrote %s", args.out_dir / name)


if __name__ == "__main__":
    main()
