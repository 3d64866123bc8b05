"""Decode throughput of the Fun-Audio-Chat runtime: batched sessions vs one session at a time.

For each batch size B it prefills B sessions with prompts of different lengths, then times
``--steps`` S2S decode steps (server sampling defaults) two ways: all B rows in one
``DecodeBatch`` (continuous batching), and the B sessions one after another alone. One LM step
yields 5 speech tokens = 0.2 s of speech, so a session's real-time factor is
step_time / 0.2 s (below 1 is faster than real time).

``--static`` adds the static-shape batch (``StaticDecodeBatch``: rows padded to a bucket, caches
preallocated) beside the eager one, and ``--cuda-graphs`` (CUDA only) the same batch replaying
CUDA graphs. On CPU the static columns only show the cost of the padding: graphs need a GPU.

    python benchmarks/runtime_decode.py                       # tiny golden model, CPU
    python benchmarks/runtime_decode.py --full-size-random    # real 8B config, random bf16, GPU
    python benchmarks/runtime_decode.py --full-size-random --static --cuda-graphs   # eager vs graphs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import torch

from utils.funaudiochat import SamplingParams, load_model
from utils.funaudiochat.config import FunAudioChatConfig
from utils.funaudiochat.decoding import DecodeBatch
from utils.funaudiochat.frontend import LogMelFrontend
from utils.funaudiochat.loading import FunAudioChatRuntime
from utils.funaudiochat.modeling import FunAudioChatModel
from utils.funaudiochat.prompt import TokenIds
from utils.funaudiochat.session import PreparedTurn, prefill_prompt
from utils.funaudiochat.static_decode import StaticDecodeBatch, StaticDecodeConfig

logger = logging.getLogger("runtime_decode")

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "fixtures" / "funaudiochat"
SECONDS_PER_STEP = 0.2  # 5 speech tokens at 25 Hz


def random_runtime(config: Path, device: torch.device) -> FunAudioChatRuntime:
    """The real-size architecture with random weights (no checkpoint needed)."""
    cfg = FunAudioChatConfig.from_json(config)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device("meta"):
        model = FunAudioChatModel(cfg)
    model = model.to_empty(device=device).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    model.tie_weights()
    frontend = LogMelFrontend.from_dir(None, num_mel_bins=cfg.audio.num_mel_bins)
    return FunAudioChatRuntime(model.eval(), cfg, None, frontend, TokenIds(), device, dtype)


def prompts(runtime: FunAudioChatRuntime, n: int, base_len: int) -> list[list[int]]:
    """n prompts of different lengths: text ids around a run of audio placeholders."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        text = torch.randint(0, 150000, (base_len + 7 * i,), generator=gen).tolist()
        audio = [runtime.tokens.audio_bos] + [runtime.tokens.audio] * 10 + [runtime.tokens.audio_eos, 198]
        out.append(text + audio)
    return out


def prepare(runtime: FunAudioChatRuntime, ids: list[int], seed: int, steps: int) -> PreparedTurn:
    rows = [torch.randn(10, runtime.config.hidden_size, device=runtime.device, dtype=runtime.dtype)]
    params = SamplingParams(seed=seed, max_steps=steps + 2)
    return prefill_prompt(runtime, ids, rows, params, speech=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


BatchFactory = Callable[[FunAudioChatRuntime], DecodeBatch | StaticDecodeBatch]


def eager_batch(runtime: FunAudioChatRuntime) -> DecodeBatch | StaticDecodeBatch:
    return DecodeBatch(runtime, speech=True)


def static_batch(config: StaticDecodeConfig) -> BatchFactory:
    return lambda runtime: StaticDecodeBatch(runtime, speech=True, config=config)


def time_batched(runtime: FunAudioChatRuntime, turns: list[PreparedTurn], steps: int,
                 make_batch: BatchFactory = eager_batch, warmup: int = 2) -> float:
    batch = make_batch(runtime)
    for t in turns:
        batch.add(t.row, t.lm_cache, t.crq_cache)
    for _ in range(warmup):  # allocations; graph captures of this bucket and span
        batch.step()
    sync(runtime.device)
    start = time.perf_counter()
    for _ in range(steps):
        batch.step()
    sync(runtime.device)
    return time.perf_counter() - start


def run(runtime: FunAudioChatRuntime, sizes: list[int], steps: int, base_len: int,
        variants: dict[str, BatchFactory] | None = None) -> list[dict[str, float]]:
    """``variants``: other batches to time beside the eager one, by column name."""
    results = []
    all_ids = prompts(runtime, max(sizes), base_len)
    warmup = 2
    for b in sizes:
        def turns(b: int = b) -> list[PreparedTurn]:
            return [prepare(runtime, all_ids[i], i, steps + warmup) for i in range(b)]

        batched = time_batched(runtime, turns(), steps, warmup=warmup)
        extra = {name: b * steps / time_batched(runtime, turns(), steps, make, warmup)
                 for name, make in (variants or {}).items()}
        sequential = sum(time_batched(runtime, [prepare(runtime, all_ids[i], i, steps + warmup)], steps,
                                      warmup=warmup)
                         for i in range(b))
        row = {
            "batch": b,
            "batched_steps_per_s": b * steps / batched,
            "sequential_steps_per_s": b * steps / sequential,
            "speedup": sequential / batched,
            "batched_rtf_per_session": (batched / steps) / SECONDS_PER_STEP,
            "sequential_rtf_per_session": (sequential / (b * steps)) / SECONDS_PER_STEP,
            **{f"{name}_steps_per_s": v for name, v in extra.items()},
        }
        logger.info("batch %d done", b)
        results.append(row)
    return results


def table(rows: list[dict[str, float]], variants: Sequence[str] = ()) -> str:
    """Eager batched first, then each variant with its ratio to eager, then one at a time."""
    var_head = "".join(f" | {name + ' steps/s':>15} | {'vs eager':>8}" for name in variants)
    head = (f"{'B':>3} | {'eager steps/s':>15}{var_head} | {'sequential steps/s':>18} | {'batching':>8} | "
            f"{'RTF/session batched':>19} | {'RTF/session alone':>17}")
    lines = [head, "-" * len(head)]
    for r in rows:
        var = "".join(f" | {r[f'{name}_steps_per_s']:>15.1f} | "
                      f"{r[f'{name}_steps_per_s'] / r['batched_steps_per_s']:>7.2f}x" for name in variants)
        lines.append(
            f"{r['batch']:>3} | {r['batched_steps_per_s']:>15.1f}{var} | "
            f"{r['sequential_steps_per_s']:>18.1f} | {r['speedup']:>7.2f}x | "
            f"{r['batched_rtf_per_session']:>19.3f} | {r['sequential_rtf_per_session']:>17.3f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full-size-random", action="store_true", help="real 8B config, random weights")
    p.add_argument("--model-path", type=Path, default=TINY / "model")
    p.add_argument("--tokenizer-path", type=Path, default=TINY / "tokenizers" / "substitute_text_tokenizer")
    p.add_argument("--real-config", type=Path, default=TINY / "real_size" / "real_config_reconstructed.json")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-sizes", default="1,2,4,8,16,32")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--prompt-len", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--static", action="store_true", help="also time the static-shape batch")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="also time the static batch replaying CUDA graphs (CUDA only)")
    p.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.cuda_graphs and device.type != "cuda":
        p.error("--cuda-graphs needs a CUDA device")
    if args.full_size_random:
        runtime = random_runtime(args.real_config, device)
    else:
        runtime = load_model(args.model_path, tokenizer_path=args.tokenizer_path, device=device)
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    # preallocate what the longest prompt needs (its CRQ cache is G times as long), not the default
    longest = args.prompt_len + 7 * (max(sizes) - 1) + 13 + args.steps + 4
    buckets = tuple(sorted({*StaticDecodeConfig().batch_buckets, max(sizes)}))
    static = StaticDecodeConfig(batch_buckets=buckets, max_len=max(256, 1 << (longest - 1).bit_length()))
    variants: dict[str, BatchFactory] = {}
    if args.static:
        variants["static"] = static_batch(static)
    if args.cuda_graphs:
        variants["graphs"] = static_batch(dataclasses.replace(static, cuda_graphs=True))
    with torch.inference_mode():
        rows = run(runtime, sizes, args.steps, args.prompt_len, variants)
    print(table(rows, list(variants)))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"runtime_decode_{'full_random' if args.full_size_random else 'tiny'}_{device.type}_{stamp}.json"
    meta = {"device": str(device), "dtype": str(runtime.dtype), "steps": args.steps, "threads": args.threads,
            "variants": list(variants),
            "model": "full-size random" if args.full_size_random else str(args.model_path), "results": rows}
    (args.out_dir / name).write_text(json.dumps(meta, indent=2))
    logger.info("wrote %s", args.out_dir / name)


if __name__ == "__main__":
    main()
