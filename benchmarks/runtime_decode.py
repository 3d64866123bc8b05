"""Decode throughput of the Fun-Audio-Chat runtime: batched sessions vs one session at a time.

For each batch size B it prefills B sessions with prompts of different lengths, then times
``--steps`` S2S decode steps (server sampling defaults) two ways: all B rows in one
``DecodeBatch`` (continuous batching), and the B sessions one after another alone. One LM step
yields 5 speech tokens = 0.2 s of speech, so a session's real-time factor is
step_time / 0.2 s (below 1 is faster than real time).

    python benchmarks/runtime_decode.py                       # tiny golden model, CPU
    python benchmarks/runtime_decode.py --full-size-random    # real 8B config, random bf16, GPU
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
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


def time_batched(runtime: FunAudioChatRuntime, turns: list[PreparedTurn], steps: int) -> float:
    batch = DecodeBatch(runtime, speech=True)
    for t in turns:
        batch.add(t.row, t.lm_cache, t.crq_cache)
    batch.step()  # warm-up (allocations)
    sync(runtime.device)
    start = time.perf_counter()
    for _ in range(steps):
        batch.step()
    sync(runtime.device)
    return time.perf_counter() - start


def run(runtime: FunAudioChatRuntime, sizes: list[int], steps: int, base_len: int) -> list[dict]:
    results = []
    all_ids = prompts(runtime, max(sizes), base_len)
    for b in sizes:
        batched = time_batched(runtime, [prepare(runtime, all_ids[i], i, steps) for i in range(b)], steps)
        sequential = sum(time_batched(runtime, [prepare(runtime, all_ids[i], i, steps)], steps)
                         for i in range(b))
        row = {
            "batch": b,
            "batched_steps_per_s": b * steps / batched,
            "sequential_steps_per_s": b * steps / sequential,
            "speedup": sequential / batched,
            "batched_rtf_per_session": (batched / steps) / SECONDS_PER_STEP,
            "sequential_rtf_per_session": (sequential / (b * steps)) / SECONDS_PER_STEP,
        }
        logger.info("batch %d done", b)
        results.append(row)
    return results


def table(rows: list[dict]) -> str:
    head = (f"{'B':>3} | {'batched steps/s':>15} | {'sequential steps/s':>18} | {'speedup':>7} | "
            f"{'RTF/session batched':>19} | {'RTF/session alone':>17}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['batch']:>3} | {r['batched_steps_per_s']:>15.1f} | {r['sequential_steps_per_s']:>18.1f} | "
            f"{r['speedup']:>6.2f}x | {r['batched_rtf_per_session']:>19.3f} | "
            f"{r['sequential_rtf_per_session']:>17.3f}"
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
    p.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.full_size_random:
        runtime = random_runtime(args.real_config, device)
    else:
        runtime = load_model(args.model_path, tokenizer_path=args.tokenizer_path, device=device)
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    with torch.inference_mode():
        rows = run(runtime, sizes, args.steps, args.prompt_len)
    print(table(rows))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"runtime_decode_{'full_random' if args.full_size_random else 'tiny'}_{device.type}_{stamp}.json"
    meta = {"device": str(device), "dtype": str(runtime.dtype), "steps": args.steps, "threads": args.threads,
            "model": "full-size random" if args.full_size_random else str(args.model_path), "results": rows}
    (args.out_dir / name).write_text(json.dumps(meta, indent=2))
    logger.info("wrote %s", args.out_dir / name)


if __name__ == "__main__":
    main()
