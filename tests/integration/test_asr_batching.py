"""The real faster-whisper handler (tiny.en) decoding queued requests together."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from tests.fakes import FAST, BatchSizes
from tests.helpers import plain_text, speech_16k
from web_demo.server.engines.base import Transcription, TranscriptionRequest
from web_demo.server.engines.local import WorkerAsrEngine
from web_demo.server.errors import BadRequest, ServingError
from web_demo.server.workers.asr_worker import FasterWhisperHandler

pytestmark = pytest.mark.slow


class CountingWhisperHandler(FasterWhisperHandler):
    """Remembers the size of every batch it serves; a BatchSizes request reads them back."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sizes: list[int] = []

    def handle_batch(self, requests: Sequence[object]) -> list[list[Any] | ServingError]:
        if all(isinstance(r, BatchSizes) for r in requests):
            return [[tuple(self.sizes)] for _ in requests]
        self.sizes.append(len(requests))
        return super().handle_batch(requests)


@pytest.fixture(scope="module")
def handler() -> FasterWhisperHandler:
    return FasterWhisperHandler(max_batch=8)


def alone(handler: FasterWhisperHandler, request: object) -> Transcription | ServingError:
    try:
        (heard,) = handler.handle(request)
    except ServingError as exc:
        return exc
    return heard


def test_a_batch_transcribes_each_request_as_it_would_alone(handler: FasterWhisperHandler,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[int] = []  # per batched decode: how many it answered
    decode = handler._batcher.decode

    def counted(requests: Sequence[TranscriptionRequest]) -> list[Any]:
        outcomes = decode(requests)
        decoded.append(sum(o is not None for o in outcomes))
        return outcomes

    monkeypatch.setattr(handler._batcher, "decode", counted)
    fox, hello, weather = speech_16k("fox"), speech_16k("hello"), speech_16k("weather")
    requests = [
        TranscriptionRequest(fox), TranscriptionRequest(hello), TranscriptionRequest(weather),
        TranscriptionRequest(hello, language="en"),
        TranscriptionRequest(fox, prompt="A sentence about a fox."),  # its own prompt layout
        TranscriptionRequest(weather, hotwords=("Paris", "weather")),
        TranscriptionRequest(np.zeros(3 * 16_000, dtype=np.float32)),  # silence: no segments
        TranscriptionRequest(hello, word_timestamps=True),  # decoded alone inside the batch
        TranscriptionRequest(np.concatenate([weather, np.zeros(16_000 * 28, np.float32), fox])),
    ]
    batched = handler.handle_batch(requests)
    assert decoded == [5, 1, 1]  # no prompt (silence too) together; the prompt, the hotwords alone
    for request, outcome in zip(requests, batched, strict=True):
        assert outcome == [alone(handler, request)]
    texts = [outcome[0].text for outcome in batched if isinstance(outcome, list)]
    assert [plain_text(t) for t in texts[:3]] == [
        "the quick brown fox jumps over the lazy dog", "hello my name is alice",
        "please tell me the weather in paris tomorrow"]
    assert texts[6] == "" and "fox" in texts[8].lower() and "weather" in texts[8].lower()


def test_a_bad_request_fails_only_itself(handler: FasterWhisperHandler) -> None:
    fox, hello = speech_16k("fox"), speech_16k("hello")
    outcomes = handler.handle_batch([
        TranscriptionRequest(fox), TranscriptionRequest(np.stack([hello, hello])),
        TranscriptionRequest(hello, language="fr"), "not a request", TranscriptionRequest(hello)])
    good = [o for i, o in enumerate(outcomes) if i in (0, 4)]
    assert [plain_text(o[0].text) for o in good if isinstance(o, list)] == [
        "the quick brown fox jumps over the lazy dog", "hello my name is alice"]
    params = [o.param if isinstance(o, BadRequest) else o for o in outcomes[1:4]]
    assert params == ["pcm_16k", "language", None]


def test_a_batch_that_breaks_is_decoded_one_by_one(handler: FasterWhisperHandler,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(requests: object) -> None:
        raise RuntimeError("CTranslate2 ran out of memory")

    monkeypatch.setattr(handler._batcher, "decode", broken)
    outcomes = handler.handle_batch([TranscriptionRequest(speech_16k("fox")),
                                     TranscriptionRequest(speech_16k("hello"), language="de")])
    assert isinstance(outcomes[0], list) and outcomes[0][0].text.startswith("the quick brown fox")
    assert isinstance(outcomes[1], BadRequest)


async def test_concurrent_calls_to_a_worker_are_decoded_in_batches() -> None:
    asr = WorkerAsrEngine(handler="tests.integration.test_asr_batching:CountingWhisperHandler",
                          init_kwargs={"max_batch": 4}, cfg=FAST)
    await asr.start()
    try:
        assert asr.health()["max_batch"] == 4
        names = ["fox", "hello", "weather"] * 3
        heard = await asyncio.gather(*(asr.transcribe(TranscriptionRequest(speech_16k(n)))
                                       for n in names))
        assert [h.text.split()[0].strip(",").lower() for h in heard] == [
            "the", "hello", "please"] * 3
        (sizes,) = await asr.worker.call(BatchSizes())
        assert sum(sizes) == len(names) and max(sizes) == 4  # queued calls shared decodes
    finally:
        await asr.aclose()
