"""The generate CLI on the tiny golden model (model dir + substitute tokenizer path)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.fac_golden import FIXTURES, MODEL_DIR, TOKENIZER_DIR
from utils.funaudiochat import generate

REPO = FIXTURES.parents[2]


def _conversation(tmp_path, turns) -> str:
    path = tmp_path / "conv.json"
    path.write_text(json.dumps({"turns": turns}))
    return str(path)


def test_cli_s2s_matches_golden_d1(tmp_path, manifest) -> None:
    info = manifest["files"]["cases/d1_generate_s2s_turn1.safetensors"]["info"]
    conv = _conversation(tmp_path, [{"user_audio": str(FIXTURES / "audio" / "audio_turn1.wav")}])
    cmd = [sys.executable, "-m", "utils.funaudiochat.generate", "--model-path", str(MODEL_DIR),
           "--tokenizer-path", str(TOKENIZER_DIR), "--conversation", conv, "--mode", "s2s",
           "--max-steps", "12", "--top-k", "1", "--device", "cpu", "--dtype", "float32"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    out = json.loads(done.stdout)
    assert out["step_text_tokens"] == info["step_text_tokens"]
    assert out["step_speech_tokens"] == info["step_speech_tokens"]
    assert isinstance(out["text"], str)


def test_cli_s2t_with_history(tmp_path, manifest, capsys) -> None:
    info = manifest["files"]["cases/d3_generate_s2t_turn1.safetensors"]["info"]
    audio = str(FIXTURES / "audio" / "audio_turn1.wav")
    args = ["--model-path", str(MODEL_DIR), "--tokenizer-path", str(TOKENIZER_DIR), "--mode", "s2t",
            "--max-steps", "12", "--top-k", "1", "--repetition-penalty", "1.0",
            "--device", "cpu", "--dtype", "float32"]
    generate.main([*args, "--conversation", _conversation(tmp_path, [{"user_audio": audio}])])
    out = json.loads(capsys.readouterr().out)
    assert out["step_text_tokens"] == info["step_text_tokens"]  # greedy S2T == upstream infer_s2t
    assert out["step_speech_tokens"] == [None] * 12
    turns = [{"user_audio": audio}, {"assistant_text": "Hello!"},
             {"user_audio": str(FIXTURES / "audio" / "audio_turn2.wav")}]
    generate.main([*args, "--conversation", _conversation(tmp_path, turns), "--max-steps", "3"])
    assert len(json.loads(capsys.readouterr().out)["step_text_tokens"]) == 3
