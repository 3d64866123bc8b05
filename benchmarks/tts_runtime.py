"""Speech-token LLM throughput of the CosyVoice3 TTS runtime: continuous batching vs one at a time.

For each concurrency N, N requests (prompts of different lengths, zero-shot layout, each with
its own seed) arrive together and each decodes exactly ``--tokens`` speech tokens (min_len =
max_len, so every run does the same work). Two ways:

* batched: one `TTSScheduler` (max_batch N): each request is prefilled alone, then all decode
  in one batched step per token;
* sequential: `generate_speech_tokens` for one request after the other (the alone path).

Reported: LLM tokens/s over all requests, time to first token (mean and worst, counted from the
common arrival, so a sequential request also waits for the ones before it) and the real-time
factor of one request's token stream (25 tokens = 1 s of speech).

    python benchmarks/tts_runtime.py                                  # tiny golden LLM, CPU fp32
    python benchmarks/tts_runtime.py --full-size-random --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from utils.cosyvoice3.llm import CosyVoice3LM, place
from utils.cosyvoice3.llm_config import llm_config_from_json
from utils.cosyvoice3.llm_decode import LengthLimits, generate_speech_tokens
from utils.cosyvoice3.llm_loading import load_llm_files
from utils.cosyvoice3.ras_sampling import SamplingFailed
from utils.cosyvoice3.tts_scheduler import TTSScheduler, request_generator

logger = logging.getLogger("tts_runtime")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "tests" / "fixtures" / "cosyvoice3_tts" / "config"
TINY_WEIGHTS = REPO / "tests" / "fixtures" / "cosyvoice3_tts" / "weights" / "tiny_llm.safetensors"
TOKENS_PER_S = 25  # speech tokens per second of audio
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def random_lm(config: Path, device: torch.device, dtype: torch.dtype) -> CosyVoice3LM:
    """The real-size architecture with random weights (no checkpoint needed)."""
    with torch.device("meta"):
        lm = CosyVoice3LM(llm_config_from_json(config))
    lm = lm.to_empty(device=device)
    with torch.no_grad():
        for p in lm.parameters():
            p.normal_(0.0, 0.02)
    return place(lm, device, dtype)  # rebuilds RoPE, ties lm_head, keeps the head fp32


def prompts(lm: CosyVoice3LM, n: int) -> list[torch.Tensor]:
    """n zero-shot lm_inputs [1, L, D] of different lengths (random text and prompt speech ids)."""
    gen = torch.Generator().manual_seed(0)
    vocab, speech = int(lm.cfg.qwen2["vocab_size"]), lm.cfg.speech_token_size
    out = []
    for i in range(n):
        prompt_text = torch.randint(0, vocab, (30 + 3 * i,), generator=gen)
        tts_text = torch.randint(0, vocab, (10 + 2 * i,), generator=gen)
        prompt_speech = torch.randint(0, speech, (40 + 5 * i,), generator=gen)
        out.append(lm.build_lm_input(tts_text, prompt_text_ids=prompt_text, prompt_speech_ids=prompt_speech))
    return out


@dataclass
class Timing:
    seconds: float  # arrival to the last token of the last request
    tokens: int
    first_token_s: list[float]  # per request, from the common arrival


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_batched(lm: CosyVoice3LM, xs: list[torch.Tensor], limits: LengthLimits) -> Timing:
    sched = TTSScheduler(lm, max_batch=len(xs), prefills_per_step=len(xs))
    sync(lm.device)
    start = time.perf_counter()
    streams = [sched.submit(x, limits, seed=i) for i, x in enumerate(xs)]
    first: dict[int, float] = {}
    while sched.has_work:
        sched.step()  # the tokens are on CPU when step returns (the sampler runs there)
        now = time.perf_counter() - start
        for i, s in enumerate(streams):
            if i not in first and s.tokens:
                first[i] = now
    total = time.perf_counter() - start
    return Timing(total, sum(len(s.tokens) for s in streams), [first.get(i, total) for i in range(len(xs))])


def time_sequential(lm: CosyVoice3LM, xs: list[torch.Tensor], limits: LengthLimits) -> Timing:
    sync(lm.device)
    start = time.perf_counter()
    first, tokens = [], 0
    for i, x in enumerate(xs):
        stream = generate_speech_tokens(lm, x, limits, generator=request_generator(i))
        got = 0
        try:
            for _ in stream:
                if got == 0:
                    first.append(time.perf_counter() - start)
                got += 1
        except SamplingFailed:
            pass
        if got == 0:
            first.append(time.perf_counter() - start)
        tokens += got
    return Timing(time.perf_counter() - start, tokens, first)


def summarize(n: int, batched: Timing, sequential: Timing) -> dict[str, float]:
    def per(t: Timing) -> dict[str, float]:
        return {"tokens_per_s": t.tokens / t.seconds, "ttft_mean_s": sum(t.first_token_s) / n,
                "ttft_max_s": max(t.first_token_s),
                # seconds of compute per second of one request's speech (< 1: faster than real time)
                "rtf_per_request": t.seconds / (t.tokens / n / TOKENS_PER_S)}
    b, s = per(batched), per(sequential)
    return {"concurrency": n, **{f"batched_{k}": v for k, v in b.items()},
            **{f"sequential_{k}": v for k, v in s.items()},
            "speedup": b["tokens_per_s"] / s["tokens_per_s"],
            "tokens": batched.tokens, "tokens_sequential": sequential.tokens}


def run(lm: CosyVoice3LM, sizes: list[int], n_tokens: int, repeats: int,
        log: Callable[[str], None] = logger.info) -> list[dict[str, float]]:
    xs_all = prompts(lm, max(sizes))
    limits = LengthLimits(min_len=n_tokens, max_len=n_tokens)
    time_batched(lm, xs_all[:2], LengthLimits(4, 4))  # warm-up (allocations, kernels)
    time_sequential(lm, xs_all[:1], LengthLimits(4, 4))
    rows = []
    for n in sizes:
        xs = xs_all[:n]
        # best of `repeats`: the machine may be shared, the minimum is the least disturbed run
        batched = min((time_batched(lm, xs, limits) for _ in range(repeats)), key=lambda t: t.seconds)
        sequential = min((time_sequential(lm, xs, limits) for _ in range(repeats)), key=lambda t: t.seconds)
        rows.append(summarize(n, batched, sequential))
        log(f"concurrency {n}: {rows[-1]['speedup']:.2f}x")
    return rows


def table(rows: list[dict[str, float]]) -> str:
    head = (f"{'N':>3} | {'batched tok/s':>13} | {'seq tok/s':>9} | {'speedup':>7} | "
            f"{'TTFT batched mean/max':>21} | {'TTFT seq mean/max':>17} | "
            f"{'RTF/req b':>9} | {'RTF/req s':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{int(r['concurrency']):>3} | {r['batched_tokens_per_s']:>13.1f} | "
            f"{r['sequential_tokens_per_s']:>9.1f} | {r['speedup']:>6.2f}x | "
            f"{r['batched_ttft_mean_s'] * 1e3:>9.1f}/{r['batched_ttft_max_s'] * 1e3:>8.1f} ms | "
            f"{r['sequential_ttft_mean_s'] * 1e3:>6.1f}/{r['sequential_ttft_max_s'] * 1e3:>7.1f} ms | "
            f"{r['batched_rtf_per_request']:>9.3f} | {r['sequential_rtf_per_request']:>9.3f}")
    return "\n".join(lines)


@dataclass(frozen=True)
class Meta:
    model: str
    device: str
    dtype: str
    threads: int
    tokens_per_request: int
    repeats: int


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full-size-random", action="store_true", help="real 0.5B config, random weights")
    p.add_argument("--config", type=Path, default=None, help="LLM config json (default: tiny or real)")
    p.add_argument("--weights", type=Path, default=TINY_WEIGHTS)
    p.add_argument("--device", default=None, help="default: cuda when available")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--concurrency", default="1,4,8,16")
    p.add_argument("--tokens", type=int, default=100, help="speech tokens per request (4 s of speech)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if args.full_size_random:
        config = args.config or CONFIGS / "real_llm_config.json"
        lm, model = random_lm(config, device, dtype), f"full-size random ({config.name})"
    else:
        config = args.config or CONFIGS / "tiny_llm_config.json"
        lm, model = place(load_llm_files(config, args.weights), device, dtype), f"tiny ({args.weights.name})"
    sizes = [int(x) for x in args.concurrency.split(",")]
    with torch.inference_mode():
        rows = run(lm, sizes, args.tokens, args.repeats)
    meta = Meta(model, str(device), str(dtype).removeprefix("torch."), args.threads, args.tokens,
                args.repeats)
    print(f"{meta.model}, {meta.device} {meta.dtype}, {meta.threads} threads, {meta.tokens_per_request} "
          f"tokens/request, best of {meta.repeats}")
    print(table(rows))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**asdict(meta), "results": rows}, indent=2))
        logger.info("wrote %s", args.json)


if __name__ == "__main__":
    main()
