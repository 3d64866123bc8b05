"""The token2wav command line reproduces the Fun-Audio-Chat streaming golden sequence."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from tests.cv3_golden import MODEL_DIR, SPEECH_ATOL, assert_close, case, manifest

ROOT = Path(__file__).resolve().parents[3]


def test_cli_upstream_fac_reproduces_golden_stream(tmp_path: Path) -> None:
    inputs = case("inputs")
    tokens_path, emb_path = tmp_path / "tokens.json", tmp_path / "emb.npy"
    tokens_path.write_text(json.dumps(inputs["speech_token"][0].tolist()))
    np.save(emb_path, inputs["embedding"].numpy())
    out, chunks_path = tmp_path / "out.wav", tmp_path / "chunks.json"
    subprocess.run(
        [sys.executable, "-m", "utils.cosyvoice3.token2wav", "--model-dir", str(MODEL_DIR),
         "--tokens", str(tokens_path), "--speaker-embedding", str(emb_path), "--mode", "upstream-fac",
         "--out", str(out), "--chunks-json", str(chunks_path), "--threads", "2"],
        check=True, cwd=ROOT, capture_output=True, timeout=300,
    )
    pcm_24k, rate = sf.read(out, dtype="float32")
    assert rate == 24000
    chunks = json.loads(chunks_path.read_text())
    assert chunks["chunk_samples"] == [c["speech_samples"] for c in manifest()["stream_funaudiochat_calls"]]
    assert chunks["total_samples"] == pcm_24k.shape[0] == 57600
    assert_close(pcm_24k, case("stream_funaudiochat")["concat_speech"], SPEECH_ATOL, "CLI upstream-fac audio")
