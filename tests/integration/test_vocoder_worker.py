"""The CosyVoice3 vocoder worker (tiny golden model) behind the worker runtime."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.fakes import FAST
from utils.cosyvoice3.streaming import Token2Wav
from web_demo.server.engines.local import WorkerVocoder
from web_demo.server.errors import BadRequest
from web_demo.server.workers.vocoder_worker import SpeechTokens, VocoderStreamRequest

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
        streams = {"a": vocoder.open_stream(), "b": vocoder.open_stream()}
        chunks: dict[str, list[np.ndarray]] = {"a": [], "b": []}
        for start in range(0, len(tokens), 5):  # one LLM step = 5 speech tokens
            for name, stream in streams.items():  # two replies interleaved, each its own state
                group = tokens[start:start + 5] + ([6562] if start + 5 >= len(tokens) else [])
                chunks[name] += await stream.push(group)
        for name, stream in streams.items():
            chunks[name] += await stream.finish()
            await stream.aclose()  # a no-op after finish
        a, b = (np.concatenate(chunks[s]) for s in ("a", "b"))
        np.testing.assert_array_equal(a, b)
        assert len(chunks["a"]) > 2  # audio arrived before the end of the reply
        local = Token2Wav.from_model_dir(CV3 / "tiny_model").new_stream(
            "cached", embedding=golden_inputs["embedding"])
        expected = np.concatenate([local.push(tokens), local.finalize()])
        assert len(a) == len(expected) == 960 * len(tokens)  # 25 Hz tokens -> 24 kHz
        np.testing.assert_allclose(a, expected, atol=5e-4)
        barged = vocoder.open_stream()
        await barged.push(tokens[:10])
        await barged.aclose()  # barge-in: dropped in the worker without its tail
    finally:
        await vocoder.aclose()


async def test_bad_input_is_a_bad_request(speaker_npy: Path) -> None:
    vocoder = WorkerVocoder(cfg=replace(FAST, close_timeout_s=10), init_kwargs={
        "model_dir": str(CV3 / "tiny_model"), "device": "cpu", "speaker_embedding": str(speaker_npy)})
    await vocoder.start()
    try:
        worker = vocoder.worker
        async with worker.open_stream(VocoderStreamRequest()) as stream:
            with pytest.raises(BadRequest, match="must be integers") as info:
                await stream.push(SpeechTokens(("12", 13)))  # type: ignore[arg-type]
            assert info.value.param == "tokens"
            with pytest.raises(BadRequest, match="does not serve list"):
                await stream.push([1, 2, 3])  # not a SpeechTokens
            assert await stream.push(SpeechTokens((1, 2, 3))) == []  # still usable
        with pytest.raises(BadRequest, match="unknown speaker") as info:
            await worker.open_stream(VocoderStreamRequest(speaker="nobody")).open()
        assert info.value.param == "speaker"
        with pytest.raises(BadRequest, match="does not serve SpeechTokens"):
            await worker.call(SpeechTokens((1, 2)))  # tokens only go to a stream
    finally:
        await vocoder.aclose()


def test_static_shapes_slots_are_freed_by_finish_and_by_close(speaker_npy: Path) -> None:
    """With static shapes every streaming reply holds a slot; barge-ins (close without a
    finish) must hand theirs back, or replies would fail once the slots ran out."""
    from web_demo.server.workers.handler import StreamCall
    from web_demo.server.workers.vocoder_worker import STATIC_SPARE_SLOTS, CosyVoice3Handler

    handler = CosyVoice3Handler(model_dir=str(CV3 / "tiny_model"), device="cpu",
                                speaker_embedding=str(speaker_npy), max_stream_batch=2,
                                static_shapes=True)
    slots = handler._batched.config.max_streams
    assert slots == 2 + STATIC_SPARE_SLOTS
    tokens = SpeechTokens(tuple(np.random.default_rng(0).integers(0, 6561, 40).tolist()))
    for _ in range(slots):  # twice as many replies as slots, one pair after another
        kept, cancelled = (handler.open_stream(VocoderStreamRequest()) for _ in range(2))
        outcomes = handler.step_streams([StreamCall(kept, tokens), StreamCall(cancelled, tokens)])
        assert all(isinstance(o, list) and len(o[0].pcm) > 0 for o in outcomes)  # a chunk each
        assert handler._batched.streams == 2
        handler.close(cancelled)  # barge-in
        [tail] = handler.step_streams([StreamCall(kept, None)])
        assert isinstance(tail, list) and handler._batched.streams == 0
        handler.close(kept)  # the runtime closes a finished stream too: a no-op here


def test_static_shapes_need_stream_batching(speaker_npy: Path) -> None:
    from web_demo.server.workers.vocoder_worker import CosyVoice3Handler

    with pytest.raises(ValueError, match="static shapes need the cached mode"):
        CosyVoice3Handler(model_dir=str(CV3 / "tiny_model"), device="cpu", mode="upstream-fac",
                          speaker_embedding=str(speaker_npy), static_shapes=True)
