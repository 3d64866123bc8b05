"""The CosyVoice3 vocoder worker (tiny golden model) behind the worker runtime."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.integration.test_workers import FAST
from utils.cosyvoice3.streaming import Token2Wav
from web_demo.server.engines.local import WorkerVocoder
from web_demo.server.errors import EngineError

pytestmark = pytest.mark.slow
CV3 = Path(__file__).resolve().parents[1] / "fixtures" / "cosyvoice3"


@pytest.fixture(scope="module")
def golden_inputs() -> dict[str, np.ndarray]:
    return load_file(str(CV3 / "cases" / "inputs.safetensors"))


@pytest.fixture
def speaker_npy(tmp_path: Path, golden_inputs) -> Path:
    path = tmp_path / "speaker.npy"
    np.save(path, golden_inputs["embedding"].astype(np.float32))
    return path


async def test_streams_per_reply_and_matches_in_process(speaker_npy: Path, golden_inputs) -> None:
    tokens = [int(t) for t in golden_inputs["speech_token"][0]]
    vocoder = WorkerVocoder(cfg=replace(FAST, close_timeout_s=10), init_kwargs={
        "model_dir": str(CV3 / "tiny_model"), "device": "cpu", "speaker_embedding": str(speaker_npy)})
    await vocoder.start()
    try:
        assert vocoder.health()["mode"] == "cached"
        chunks: dict[str, list[np.ndarray]] = {"a": [], "b": []}
        for start in range(0, len(tokens), 5):  # one LLM step = 5 speech tokens
            for stream in ("a", "b"):  # two replies interleaved, each its own state
                group = tokens[start:start + 5] + ([6562] if start + 5 >= len(tokens) else [])
                chunks[stream] += await vocoder.push(stream, group)
        for stream in chunks:
            chunks[stream] += await vocoder.finish(stream)
        a, b = (np.concatenate(chunks[s]) for s in ("a", "b"))
        np.testing.assert_array_equal(a, b)
        assert len(chunks["a"]) > 2  # audio arrived before the end of the reply
        local = Token2Wav.from_model_dir(CV3 / "tiny_model").new_stream(
            "cached", embedding=golden_inputs["embedding"])
        expected = np.concatenate([local.push(tokens), local.finalize()])
        assert len(a) == len(expected) == 960 * len(tokens)  # 25 Hz tokens -> 24 kHz
        np.testing.assert_allclose(a, expected, atol=5e-4)
        await vocoder.push("c", tokens[:10])
        await vocoder.close("c")  # barge-in: dropped, a new push starts a fresh stream
        with pytest.raises(EngineError, match="unknown method"):
            await vocoder.worker.call("transcribe", {"stream": "x"})
    finally:
        await vocoder.aclose()
