"""Streaming token2wav cost per second of audio, by mode and reply length.

    python benchmarks/token2wav_stream.py                      # tiny golden model, CPU
    python benchmarks/token2wav_stream.py --full-size-random --device cuda --dtype float16
    python benchmarks/token2wav_stream.py --batched                # batched vs serial streams

Each run pushes random speech tokens one at a time (as the LLM emits them) into a fresh
stream, then finalizes it. Times are compute only (tokens are available instantly):
- cost_ms_per_s: total compute / seconds of audio produced (= RTF x 1000);
- first_chunk_ms: compute until the first non-empty chunk; first_chunk_tokens: tokens the
  stream needed before it (at 25 tokens/s from the LLM that is the arrival wait);
- last_chunk_ms_per_s: cost of the reply's last full hop per second of audio it produced,
  which shows how per-chunk cost grows with the prefix.

`--batched` instead runs N cached streams (1/4/8/16) side by side, each reply fed one LLM
step (`--step-tokens`) per round: serially (one stream's push after another, as a worker
serving one request at a time does) and batched (one `BatchedToken2Wav.advance` per round
for all streams). tokens/s is the speech tokens all streams turned into audio per compute
second; RTF is compute / one reply's audio seconds (< 1: all N keep real time); max_diff is
the largest batched-vs-serial sample difference. Each time is the best of `--repeats`
passes of its kind, serial and batched alternating which goes first. `--stagger` starts
stream i i rounds late, so chunks fall due in different rounds.
Prints a table and writes JSON under benchmarks/results/ (gitignored).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from utils.cosyvoice3.batched_stream import BatchedToken2Wav, StreamWork
from utils.cosyvoice3.config import flow_config_from_tree, hift_config_from_tree, load_json_tree
from utils.cosyvoice3.loading import build_modules, place
from utils.cosyvoice3.noise import build_noise
from utils.cosyvoice3.streaming import StreamMode, Token2Wav

ROOT = Path(__file__).resolve().parents[1]

logger = logging.getLogger("token2wav_bench")

FIXTURES = ROOT / "tests" / "fixtures" / "cosyvoice3"
TOKEN_RATE = 25
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Result:
    mode: str
    reply_s: float
    audio_s: float
    chunks: int
    first_chunk_tokens: int
    first_chunk_ms: float
    total_s: float
    cost_ms_per_s: float
    last_chunk_ms_per_s: float
    rtf: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_model(args: argparse.Namespace) -> Token2Wav:
    dtype = _DTYPES[args.dtype]
    if not args.full_size_random:
        return Token2Wav.from_model_dir(args.model_dir, device=args.device, dtype=dtype,
                                        left_chunks=args.left_chunks)
    flow_cfg = flow_config_from_tree(load_json_tree(FIXTURES / "config" / "real_flow_config.json"))
    hift_cfg = hift_config_from_tree(load_json_tree(FIXTURES / "config" / "real_hift_config.json"))
    flow, hift = build_modules(flow_cfg, hift_cfg, build_noise(flow_cfg, hift_cfg))
    hift.fold_weight_norm()
    place(flow, hift, torch.device(args.device), dtype)
    if args.left_chunks is not None:
        flow.set_left_chunks(args.left_chunks)
    return Token2Wav(flow, hift)


def run_one(model: Token2Wav, mode: str, reply_s: float, embedding: np.ndarray, seed: int) -> Result:
    tokens = np.random.default_rng(seed).integers(0, 6561, int(reply_s * TOKEN_RATE)).tolist()
    device = model.device
    stream = model.new_stream(mode, embedding=embedding)
    # per non-empty chunk: (tokens pushed, seconds of that call, samples, compute so far)
    timeline: list[tuple[int, float, int, float]] = []
    spent = 0.0
    for i, token in enumerate([*tokens, None]):
        _sync(device)
        start = time.perf_counter()
        pcm = stream.push([token]) if token is not None else stream.finalize()
        _sync(device)
        took = time.perf_counter() - start
        spent += took
        if pcm.size:
            timeline.append((min(i + 1, len(tokens)), took, pcm.size, spent))
    rate = model.sample_rate
    audio_s = sum(entry[2] for entry in timeline) / rate
    first_tokens, _, _, first_spent = timeline[0]
    hops = timeline[:-1] or timeline  # the final call can be a short tail; use the last hop
    _, last_t, last_n, _ = hops[-1]
    return Result(mode=mode, reply_s=reply_s, audio_s=round(audio_s, 3), chunks=len(timeline),
                  first_chunk_tokens=first_tokens, first_chunk_ms=round(1000 * first_spent, 2),
                  total_s=round(spent, 4),
                  cost_ms_per_s=round(1000 * spent / audio_s, 2),
                  last_chunk_ms_per_s=round(1000 * last_t / (last_n / rate), 2),
                  rtf=round(spent / audio_s, 4))


@dataclass
class BatchedResult:
    streams: int
    reply_s: float
    serial_s: float
    batched_s: float
    serial_tokens_per_s: float
    batched_tokens_per_s: float
    speedup: float
    serial_rtf: float
    batched_rtf: float
    max_diff: float


def _rounds(n_streams: int, n_tokens: int, step: int, stagger: bool) -> list[list[tuple[int, int, bool]]]:
    """Per round: (stream, first token of its push, finalize) for the streams pushing then."""
    groups = -(-n_tokens // step)
    start = [i if stagger else 0 for i in range(n_streams)]
    rounds: list[list[tuple[int, int, bool]]] = []
    for r in range(max(start) + groups):
        rounds.append([(i, (r - s) * step, r - s == groups - 1)
                       for i, s in enumerate(start) if 0 <= r - s < groups])
    return rounds


Pcm = list[list[np.ndarray]]  # per stream, its chunks in order


def _serial_pass(model: Token2Wav, tokens: list[list[int]], rounds: list[list[tuple[int, int, bool]]],
                 step: int, embedding: np.ndarray) -> tuple[float, Pcm]:
    """One stream's push after another per round, as a worker serving one request at a time."""
    streams = [model.new_stream("cached", embedding=embedding) for _ in tokens]
    pcm: Pcm = [[] for _ in tokens]
    _sync(model.device)
    start = time.perf_counter()
    for pushes in rounds:
        for i, at, last in pushes:
            pcm[i].append(streams[i].push(tokens[i][at:at + step]))
            if last:
                pcm[i].append(streams[i].finalize())
    _sync(model.device)
    return time.perf_counter() - start, pcm


def _batched_pass(model: Token2Wav, tokens: list[list[int]], rounds: list[list[tuple[int, int, bool]]],
                  step: int, embedding: np.ndarray) -> tuple[float, Pcm]:
    """One `BatchedToken2Wav.advance` per round for every stream pushing in it."""
    batcher = BatchedToken2Wav(model)
    streams = [model.new_stream("cached", embedding=embedding) for _ in tokens]
    pcm: Pcm = [[] for _ in tokens]
    _sync(model.device)
    start = time.perf_counter()
    for pushes in rounds:
        work = [StreamWork(streams[i], tokens[i][at:at + step], finalize=last) for i, at, last in pushes]
        for (i, _, _), out in zip(pushes, batcher.advance(work), strict=True):
            assert isinstance(out, np.ndarray), out
            pcm[i].append(out)
    _sync(model.device)
    return time.perf_counter() - start, pcm


def run_batched(model: Token2Wav, n_streams: int, reply_s: float, step: int, stagger: bool,
                embedding: np.ndarray, repeats: int = 1) -> BatchedResult:
    """Best of `repeats` passes each, serial and batched alternating which goes first, so a
    cold first pass (kernel selection for new shapes) or a noisy spell of the host does
    not decide the ratio."""
    n_tokens = int(reply_s * TOKEN_RATE)
    tokens = [np.random.default_rng(i).integers(0, 6561, n_tokens).tolist() for i in range(n_streams)]
    rounds = _rounds(n_streams, n_tokens, step, stagger)
    serial_s = batched_s = float("inf")
    diff = 0.0
    for r in range(repeats):
        if r % 2 == 0:
            s_took, serial_pcm = _serial_pass(model, tokens, rounds, step, embedding)
            b_took, batched_pcm = _batched_pass(model, tokens, rounds, step, embedding)
        else:
            b_took, batched_pcm = _batched_pass(model, tokens, rounds, step, embedding)
            s_took, serial_pcm = _serial_pass(model, tokens, rounds, step, embedding)
        serial_s, batched_s = min(serial_s, s_took), min(batched_s, b_took)
        diff = max(diff, *(float(np.abs(np.concatenate(a) - np.concatenate(b)).max())
                           for a, b in zip(serial_pcm, batched_pcm, strict=True)))
    audio_s = n_tokens / TOKEN_RATE
    total = n_streams * n_tokens
    return BatchedResult(streams=n_streams, reply_s=reply_s, serial_s=round(serial_s, 3),
                         batched_s=round(batched_s, 3),
                         serial_tokens_per_s=round(total / serial_s, 1),
                         batched_tokens_per_s=round(total / batched_s, 1),
                         speedup=round(serial_s / batched_s, 2),
                         serial_rtf=round(serial_s / audio_s, 3), batched_rtf=round(batched_s / audio_s, 3),
                         max_diff=diff)


def print_batched_table(results: list[BatchedResult]) -> str:
    header = ("streams", "reply_s", "serial_s", "batched_s", "serial_tok/s", "batched_tok/s",
              "speedup", "serial_RTF", "batched_RTF", "max_diff")
    rows = [(str(r.streams), f"{r.reply_s:g}", f"{r.serial_s:.2f}", f"{r.batched_s:.2f}",
             f"{r.serial_tokens_per_s:.0f}", f"{r.batched_tokens_per_s:.0f}", f"{r.speedup:.2f}x",
             f"{r.serial_rtf:.3f}", f"{r.batched_rtf:.3f}", f"{r.max_diff:.1e}") for r in results]
    return _table(header, rows)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths)),
             "-|-".join("-" * w for w in widths)]
    lines += [" | ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def print_table(results: list[Result]) -> str:
    header = ("mode", "reply_s", "audio_s", "chunks", "first_tok", "first_ms", "total_s",
              "ms/audio_s", "last_hop_ms/s", "RTF")
    rows = [(r.mode, f"{r.reply_s:g}", f"{r.audio_s:.2f}", str(r.chunks), str(r.first_chunk_tokens),
             f"{r.first_chunk_ms:.1f}", f"{r.total_s:.2f}", f"{r.cost_ms_per_s:.1f}",
             f"{r.last_chunk_ms_per_s:.1f}", f"{r.rtf:.3f}") for r in results]
    return _table(header, rows)


def growth(results: list[Result]) -> dict[str, float]:
    """cost per audio second at the longest reply / at the shortest, per mode."""
    out = {}
    for mode in {r.mode for r in results}:
        rs = sorted((r for r in results if r.mode == mode), key=lambda r: r.reply_s)
        out[mode] = round(rs[-1].cost_ms_per_s / rs[0].cost_ms_per_s, 3)
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=FIXTURES / "tiny_model")
    p.add_argument("--full-size-random", action="store_true", help="real-size configs with random weights")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="float32")
    p.add_argument("--durations", type=float, nargs="+", default=[5, 15, 30], help="reply lengths in seconds")
    modes = [m.value for m in StreamMode]
    p.add_argument("--modes", nargs="+", default=modes, choices=modes)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup-s", type=float, default=2.0,
                   help="reply length of the untimed warm-up run per mode")
    p.add_argument("--left-chunks", type=int, help="override num_decoding_left_chunks (-1: all, as released)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--batched", action="store_true", help="batched vs serial cached streams")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8, 16], help="with --batched")
    p.add_argument("--reply-s", type=float, default=10.0, help="with --batched: each reply's length")
    p.add_argument("--step-tokens", type=int, default=5, help="with --batched: tokens per push")
    p.add_argument("--stagger", action="store_true", help="with --batched: stream i starts i rounds late")
    p.add_argument("--repeats", type=int, default=3,
                   help="with --batched: timed passes of each kind per row; the table shows the best")
    return p.parse_args(argv)


def _meta(args: argparse.Namespace) -> dict[str, object]:
    return {"model": "full-size random" if args.full_size_random else str(args.model_dir),
            "device": args.device, "dtype": args.dtype, "threads": args.threads,
            "left_chunks": args.left_chunks, "torch": torch.__version__, "machine": platform.machine(),
            "gpu": (torch.cuda.get_device_name(0)
                    if torch.cuda.is_available() and args.device.startswith("cuda") else None)}


def main_batched(args: argparse.Namespace, model: Token2Wav, embedding: np.ndarray) -> None:
    run_batched(model, 2, args.warmup_s, args.step_tokens, False, embedding)  # warm-up
    results = [run_batched(model, n, args.reply_s, args.step_tokens, args.stagger, embedding, args.repeats)
               for n in args.streams]
    logger.info("%d-token pushes, %s starts, %d thread(s), best of %d\n%s", args.step_tokens,
                "staggered" if args.stagger else "aligned", args.threads, args.repeats,
                print_batched_table(results))
    args.out.mkdir(parents=True, exist_ok=True)
    size = "full_random" if args.full_size_random else "tiny"
    name = f"token2wav_batched_{size}_{args.device.replace(':', '')}"
    path = args.out / f"{name}_{time.strftime('%Y%m%d_%H%M%S')}.json"
    path.write_text(json.dumps({**_meta(args), "step_tokens": args.step_tokens, "stagger": args.stagger,
                                "repeats": args.repeats, "results": [asdict(r) for r in results]}, indent=1))
    logger.info("wrote %s", path)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    model = load_model(args)
    embedding = np.random.default_rng(2).standard_normal(192).astype(np.float32)
    if args.batched:
        with torch.inference_mode():
            main_batched(args, model, embedding)
        return
    for mode in args.modes:  # warm-up: first calls pay for kernel selection and allocation
        run_one(model, mode, args.warmup_s, embedding, seed=99)
    results = [run_one(model, mode, d, embedding, seed=i)
               for mode in args.modes for i, d in enumerate(args.durations)]
    table = print_table(results)
    ratios = growth(results)
    logger.info("%s\n\ncost per audio second, longest / shortest reply: %s", table, ratios)
    args.out.mkdir(parents=True, exist_ok=True)
    size = "full_random" if args.full_size_random else "tiny"
    name = f"token2wav_stream_{size}_{args.device.replace(':', '')}"
    path = args.out / f"{name}_{time.strftime('%Y%m%d_%H%M%S')}.json"
    path.write_text(json.dumps({
        **_meta(args),
        "results": [asdict(r) for r in results], "cost_growth_longest_vs_shortest": ratios,
    }, indent=1))
    logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
