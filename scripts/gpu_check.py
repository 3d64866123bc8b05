"""The Python half of scripts/gpu_check.sh: golden parity on a device, random full-size
checkpoints for a server, and N concurrent /api/chat sessions judged against real time.

    python -m scripts.gpu_check parity --device cuda --dtypes float32,bfloat16
    python -m scripts.gpu_check write-random OUT_DIR [--fac-config JSON] [--cv3-flow JSON --cv3-hift JSON]
    python -m scripts.gpu_check sessions --url ws://127.0.0.1:8002/api/chat --sessions 1,8,32 --seconds 8

parity: the goldens of tests/fixtures (made on CPU in float32 by upstream's classes) against
both runtimes on --device: Fun-Audio-Chat's encoders and LM forward (two turns), the CosyVoice3
TTS LLM forward, and CosyVoice3 token2wav end to end. float32 runs with TF32 off and must stay
within FP32_SCALE x the CPU tests' tolerances; bfloat16 is judged by the error relative to the
golden's largest magnitude (BF16_REL). Every number is printed, pass or fail.

sessions: each session sends one spoken turn (tests/fixtures/speech/fox.wav, paced as a browser
sends it), then plays the reply as a client would: playback starts PLAYBACK_BUFFER_S after the
first audio page, and the session keeps real time if no later page arrives after its own play
time. A random-weight model never stops talking on its own, so each session watches --seconds
of reply and then hangs up (which cancels the reply, as a barge-in would).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
FP32_SCALE = 10.0  # GPU kernels sum in other orders than the CPU's; 10x the CPU tolerance
BF16_REL = 0.1  # bf16 keeps ~3 significant digits; through a few layers 1-5 % is typical
PLAYBACK_BUFFER_S = 0.2
SAMPLE_RATE_OUT = 24000
SHARD_BYTES = 4 << 30


# -- parity ------------------------------------------------------------------------------------


@dataclass
class Check:
    what: str
    dtype: str
    err: float  # max |got - want|, or relative to max |want| for bf16
    tol: float
    metric: str

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.err)) and self.err <= self.tol


def _err(got: torch.Tensor | np.ndarray, want: torch.Tensor, dtype: torch.dtype) -> tuple[float, str]:
    g = torch.as_tensor(np.asarray(got)) if isinstance(got, np.ndarray) else got.detach()
    g = g.float().cpu().reshape(want.shape)
    w = want.float()
    diff = float((g - w).abs().max()) if w.numel() else 0.0
    if dtype == torch.float32:
        return diff, "abs"
    return diff / max(float(w.abs().max()), 1e-12), "rel"


def _tol(cpu_tol: float, dtype: torch.dtype) -> float:
    return cpu_tol * FP32_SCALE if dtype == torch.float32 else BF16_REL


def parity_fun_audio_chat(device: torch.device, dtype: torch.dtype) -> list[Check]:
    from tests.fac_golden import MODEL_DIR, TOKENIZER_DIR, case
    from utils.funaudiochat import load_model

    runtime = load_model(MODEL_DIR, tokenizer_path=TOKENIZER_DIR, device=device, dtype=dtype)
    model, name = runtime.model, str(dtype).removeprefix("torch.")
    checks: list[Check] = []

    def add(what: str, got: torch.Tensor, want: torch.Tensor, cpu_tol: float) -> None:
        err, metric = _err(got, want, dtype)
        checks.append(Check(f"fun-audio-chat {what}", name, err, _tol(cpu_tol, dtype), metric))

    on = lambda t: t.to(device)
    a, b, c = case("a_frontend_turn1"), case("b_encoders_turn1"), case("c_forward_turn1")
    mel_len = int(a["feature_attention_mask"].sum())
    feats = on(a["input_features"]).to(dtype)
    cont, _ = model.continuous_audio_tower(feats, [mel_len], 60)
    add("continuous audio tower", cont, b["continuous_features"], 1e-5)
    rows = model.encode_audio(feats, [mel_len], [57])
    add("merged audio features", rows[0][None], b["merged_audio_features"], 1e-5)
    embeds = model.embed_prompt(on(a["input_ids"]), rows[0])
    logits, hidden = model.language_model(embeds, model.new_lm_cache())
    add("turn-1 text logits", logits, c["text_logits_last"], 1e-4)
    add("turn-1 last hidden state", hidden, c["last_hidden_state"], 1e-4)
    speech = model.audio_invert_tower.parallel_logits(hidden + model.language_model.embed(on(a["input_ids"])))
    add("turn-1 speech logits", speech[:, -5:], c["speech_logits_last_group"], 1e-4)
    e = case("e_turn2_inputs_forward")
    mel_lens = e["feature_attention_mask"].sum(-1).tolist()
    frames = e["speech_attention_mask"].sum(-1).tolist()
    rows = model.encode_audio(on(e["input_features"]).to(dtype), mel_lens, frames)
    logits, hidden = model.language_model(model.embed_prompt(on(e["input_ids"]), torch.cat(rows)),
                                          model.new_lm_cache())
    add("turn-2 text logits", logits, e["text_logits_last"], 1e-4)
    return checks


def parity_cosyvoice3(device: torch.device, dtype: torch.dtype) -> list[Check]:
    from tests.cv3_golden import MODEL_DIR, SINE_SAMPLES, SPEECH_ATOL
    from tests.cv3_golden import case as cv3_case
    from tests.tts_golden import HIDDEN_ATOL, LOGP_ATOL, tiny_lm
    from tests.tts_golden import case as tts_case
    from utils.cosyvoice3 import Token2Wav
    from utils.cosyvoice3.llm import place

    name = str(dtype).removeprefix("torch.")
    checks: list[Check] = []

    def add(what: str, got: torch.Tensor | np.ndarray, want: torch.Tensor, cpu_tol: float) -> None:
        err, metric = _err(got, want, dtype)
        checks.append(Check(f"cosyvoice3 {what}", name, err, _tol(cpu_tol, dtype), metric))

    c = tts_case("llm_forward")
    lm = place(tiny_lm(), device, dtype)
    hidden, _ = lm(c["lm_input"].to(device=device, dtype=dtype))
    add("TTS LLM final hidden", hidden, c["hidden_final"], HIDDEN_ATOL)
    add("TTS LLM log-probs (last 4)", lm.llm_decoder(hidden[:, -4:]), c["logits_last4"], LOGP_ATOL)
    vocoder = Token2Wav.from_model_dir(MODEL_DIR, device=device, dtype=dtype, sine_samples=SINE_SAMPLES)
    inputs, golden = cv3_case("inputs"), cv3_case("e2e_offline")
    speech = vocoder.offline(inputs["speech_token"][0].tolist(), embedding=inputs["embedding"])
    add("token2wav offline speech", speech, golden["speech"], SPEECH_ATOL)
    return checks


def run_parity(device: torch.device, dtypes: Sequence[torch.dtype]) -> list[Check]:
    torch.backends.cuda.matmul.allow_tf32 = False  # the goldens are true float32
    torch.backends.cudnn.allow_tf32 = False
    checks: list[Check] = []
    for dtype in dtypes:
        with torch.inference_mode():
            checks += parity_fun_audio_chat(device, dtype)
            checks += parity_cosyvoice3(device, dtype)
    return checks


# -- random full-size checkpoints --------------------------------------------------------------


def write_fun_audio_chat(config: Path, out: Path, device: torch.device) -> Path:
    """A released-layout checkpoint (config, sharded safetensors + index, tokenizer) with the
    real architecture and random bf16 weights; `load_model(out)` reads it like the real one."""
    from safetensors.torch import save_file

    from tests.fac_golden import MODEL_DIR, TOKENIZER_DIR
    from utils.funaudiochat.config import FunAudioChatConfig
    from utils.funaudiochat.loading import TIED_KEY
    from utils.funaudiochat.modeling import FunAudioChatModel

    out.mkdir(parents=True, exist_ok=True)
    cfg = FunAudioChatConfig.from_json(config)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device(device), torch.no_grad():
        model = FunAudioChatModel(cfg).to(dtype)
        for p in model.parameters():
            p.normal_(0.0, 0.02)
        model.tie_weights()
    state = {k: v for k, v in model.state_dict().items() if k != TIED_KEY}  # the loader re-ties it
    weight_map: dict[str, str] = {}
    shards: list[list[str]] = [[]]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    for i, keys in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: state[k].detach().contiguous().cpu() for k in keys}, str(out / name))
        weight_map.update(dict.fromkeys(keys, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    shutil.copy(config, out / "config.json")
    for extra in ("preprocessor_config.json", "generation_config.json"):
        shutil.copy(MODEL_DIR / extra, out / extra)
    for f in TOKENIZER_DIR.iterdir():
        shutil.copy(f, out / f.name)
    del model, state
    return out


def write_cosyvoice3(flow_config: Path, hift_config: Path, out: Path) -> Path:
    """A test-layout CosyVoice3 vocoder directory (utils/cosyvoice3/loading.py) with random weights."""
    from safetensors.torch import save_file

    from utils.cosyvoice3.config import flow_config_from_tree, hift_config_from_tree, load_json_tree
    from utils.cosyvoice3.loading import build_modules
    from utils.cosyvoice3.noise import build_noise

    out.mkdir(parents=True, exist_ok=True)
    flow_cfg = flow_config_from_tree(load_json_tree(flow_config))
    hift_cfg = hift_config_from_tree(load_json_tree(hift_config))
    torch.manual_seed(0)
    flow, hift = build_modules(flow_cfg, hift_cfg, build_noise(flow_cfg, hift_cfg))
    for module, name in ((flow, "flow"), (hift, "hift")):
        save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()},
                  str(out / f"{name}.safetensors"))
    shutil.copy(flow_config, out / "flow_config.json")
    shutil.copy(hift_config, out / "hift_config.json")
    return out


# -- concurrent sessions -----------------------------------------------------------------------


@dataclass
class SessionResult:
    session: int
    first_audio_s: float | None
    audio_s: float
    max_late_s: float | None  # > 0: a page came after its play time (the listener heard a gap)
    error: str = ""

    @property
    def real_time(self) -> bool:
        return not self.error and self.max_late_s is not None and self.max_late_s <= 0 and self.audio_s >= 1.0


def judge(audio_times: Sequence[float], page_seconds: Sequence[float],
          watched_until: float | None = None) -> tuple[float, float | None]:
    """(audio seconds, worst lateness) of pages arriving at `audio_times` holding `page_seconds`
    of audio each, played from PLAYBACK_BUFFER_S after the first one. `watched_until`: when
    the listener stopped while the reply was still going; silence before it counts as late."""
    if not audio_times:
        return 0.0, None
    start = audio_times[0] + PLAYBACK_BUFFER_S
    played, worst = 0.0, -float("inf")
    for arrived, seconds in zip(audio_times, page_seconds, strict=True):
        worst = max(worst, arrived - (start + played))
        played += seconds
    if watched_until is not None:
        worst = max(worst, watched_until - (start + played))
    return played, worst


async def one_session(url: str, index: int, pages: list[bytes], seconds: float,
                      delay_s: float) -> SessionResult:
    import aiohttp

    from web_demo.chat_client import ChatClient, ChatError

    await asyncio.sleep(delay_s)
    try:
        async with await ChatClient.connect(url, timeout_s=30) as chat:
            await chat.turn(pages, realtime=True)
            first = await chat.receive_until_audio(timeout=120)
            rest = await chat.receive_for(seconds)
            stopped = time.perf_counter()
    except (ChatError, aiohttp.ClientError, TimeoutError, OSError) as exc:
        return SessionResult(index, None, 0.0, None, f"{type(exc).__name__}: {exc}")
    times = first.audio_times + rest.audio_times
    chunks = first.pcm_chunks_24k + rest.pcm_chunks_24k
    finished = first.final is not None or rest.final is not None  # the reply ended by itself
    audio_s, late = judge(times, [len(c) / SAMPLE_RATE_OUT for c in chunks], None if finished else stopped)
    errors = first.errors + rest.errors
    return SessionResult(index, first.first_audio_s, audio_s, late, "; ".join(errors)[:200])


async def run_sessions(url: str, n: int, pages: list[bytes], seconds: float) -> list[SessionResult]:
    return list(await asyncio.gather(*(one_session(url, i, pages, seconds, delay_s=i * 0.5 / n)
                                       for i in range(n))))


def print_sessions(n: int, results: list[SessionResult], out: Callable[[str], None] = print) -> None:
    ok = sum(r.real_time for r in results)
    out(f"N={n}: {ok}/{n} sessions kept real time")
    for r in results:
        first = f"{r.first_audio_s:.2f}" if r.first_audio_s is not None else "-"
        late = f"{r.max_late_s:+.3f}" if r.max_late_s is not None else "-"
        verdict = "REAL TIME" if r.real_time else "BEHIND   "
        out(f"  session {r.session:>3}: {verdict}  first audio {first} s, "
            f"{r.audio_s:.1f} s of audio, worst page lateness {late} s{'  ' + r.error if r.error else ''}")


# -- CLI -----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    par = sub.add_parser("parity")
    par.add_argument("--device", default="cuda")
    par.add_argument("--dtypes", default="float32,bfloat16")
    par.add_argument("--json", type=Path)
    wr = sub.add_parser("write-random")
    wr.add_argument("out", type=Path)
    wr.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    fac = ROOT / "tests/fixtures/funaudiochat/real_size/real_config_reconstructed.json"
    wr.add_argument("--fac-config", type=Path, default=fac)
    cv3 = ROOT / "tests/fixtures/cosyvoice3/config"
    wr.add_argument("--cv3-flow", type=Path, default=cv3 / "real_flow_config.json")
    wr.add_argument("--cv3-hift", type=Path, default=cv3 / "real_hift_config.json")
    se = sub.add_parser("sessions")
    se.add_argument("--url", required=True)
    se.add_argument("--sessions", default="1,8,32")
    se.add_argument("--seconds", type=float, default=8.0, help="seconds of reply each session watches")
    se.add_argument("--wav", type=Path, default=ROOT / "tests/fixtures/speech/fox.wav")
    se.add_argument("--json", type=Path)
    a = p.parse_args(argv)

    if a.cmd == "parity":
        dtypes = [getattr(torch, d) for d in a.dtypes.split(",")]
        checks = run_parity(torch.device(a.device), dtypes)
        for c in checks:
            print(f"{'ok  ' if c.ok else 'FAIL'} {c.dtype:<8} {c.what:<40} {c.metric} err {c.err:.3g} "
                  f"(tolerance {c.tol:.3g})")
        if a.json:
            a.json.write_text(json.dumps([asdict(c) | {"ok": c.ok} for c in checks], indent=1))
        bad = [c for c in checks if not c.ok]
        print(f"parity on {a.device}: {len(checks) - len(bad)}/{len(checks)} within tolerance")
        return 1 if bad else 0

    if a.cmd == "write-random":
        started = time.perf_counter()
        write_fun_audio_chat(a.fac_config, a.out / "fun-audio-chat", torch.device(a.device))
        write_cosyvoice3(a.cv3_flow, a.cv3_hift, a.out / "cosyvoice3")
        np.save(a.out / "speaker.npy", np.random.default_rng(0).standard_normal(192).astype(np.float32))
        print(f"random checkpoints in {a.out} ({time.perf_counter() - started:.0f} s)")
        return 0

    from utils.audio import WIRE_SAMPLE_RATE, read_wav, resample
    from utils.opus import encode_browser_pages

    pcm, rate = read_wav(a.wav)
    pages = encode_browser_pages(resample(pcm, rate, WIRE_SAMPLE_RATE))
    all_ok, report = True, {}
    for n in (int(x) for x in a.sessions.split(",")):
        results = asyncio.run(run_sessions(a.url, n, pages, a.seconds))
        print_sessions(n, results)
        all_ok &= all(r.real_time for r in results)
        report[n] = [asdict(r) | {"real_time": r.real_time} for r in results]
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
