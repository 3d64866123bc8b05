"""Vocoder worker handler: CosyVoice3 token2wav, one stream per reply (runs in a worker).

Speech tokens (25 Hz, codes < 6561) go in as they are generated; 24 kHz PCM comes out as
soon as each hop is ready. Each reply opens its own stream (VocoderStreamRequest), pushes
SpeechTokens, and finishes it for the tail; the worker runtime keeps the stream states.

In the cached mode the pushes and finishes queued for different streams are served together
(`step_streams`): every stream with a chunk ready goes through one batched flow-matching
solve and HiFT step (utils/cosyvoice3/batched_stream.py), and each gets the audio it would
have got alone. With `static_shapes` those steps keep static shapes per batch bucket
(utils/cosyvoice3/static_token2wav.py), captured once as CUDA graphs and replayed on a GPU;
each stream then holds a slot from its first chunk to its end (or close).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from web_demo.server.devices import resolve_device
from web_demo.server.engines.base import PcmChunk
from web_demo.server.errors import BadRequest, EngineError, ServingError
from web_demo.server.workers.handler import StreamCall, unknown_request

MAX_STREAMS = 512  # one per active reply; bounds the memory of abandoned streams
DEFAULT_MAX_STREAM_BATCH = 32  # streams advanced by one batched step
# static slots beyond max_stream_batch: replies whose streams still finish while the next
# turns, admitted to the S2S decode batch in their place, start
STATIC_SPARE_SLOTS = 4
SPEECH_CODEBOOK = 6561
_DTYPES = {"float32", "float16", "bfloat16"}


@dataclass(frozen=True)
class VocoderStreamRequest:
    """Opens one reply's stream."""
    speaker: str | None = None  # a spk2info id; None = the worker's speaker or embedding


@dataclass(frozen=True)
class SpeechTokens:
    """The next speech tokens of a stream; ids >= 6561 (BOS/EOS/pad) are skipped."""
    tokens: tuple[int, ...]


@dataclass(frozen=True)
class VocoderStatsRequest:
    """Asks how the streams were batched so far (answered by one VocoderStats)."""


@dataclass(frozen=True)
class VocoderStats:
    batches: int  # step_streams calls
    calls: int  # stream pushes and finishes served in them
    largest: int  # most calls in one batch


class CosyVoice3Handler:
    """A stream handler: open -> a token2wav stream; push tokens -> PCM; finish -> the tail."""

    max_streams = MAX_STREAMS

    def __init__(self, *, model_dir: str, device: str = "auto", dtype: str = "float32",
                 mode: str = "cached", speaker: str | None = None,
                 speaker_embedding: str | None = None,
                 max_stream_batch: int = DEFAULT_MAX_STREAM_BATCH, static_shapes: bool = False) -> None:
        import torch

        from utils.cosyvoice3.streaming import StreamMode, Token2Wav

        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}")
        self._device = resolve_device(device)
        if self._device.startswith("cuda"):
            torch.cuda.set_device(torch.device(self._device))
        else:
            dtype = "float32"  # half precision is slower, not faster, on CPUs
        self._model = Token2Wav.from_model_dir(model_dir, device=self._device,
                                               dtype=getattr(torch, dtype))
        self._mode = StreamMode(mode)
        if max_stream_batch < 1:
            raise ValueError(f"max_stream_batch must be at least 1, got {max_stream_batch}")
        # only cached streams batch; the upstream modes re-run whole prefixes, one at a time
        self.max_stream_batch = max_stream_batch if self._mode is StreamMode.CACHED else 1
        if static_shapes and self.max_stream_batch == 1:
            raise ValueError("static shapes need the cached mode and max_stream_batch > 1")
        self._static = static_shapes
        self._batched = _batcher(self._model, max_stream_batch, static_shapes)
        self._stats = VocoderStats(0, 0, 0)
        self._embedding = np.load(speaker_embedding) if speaker_embedding else None
        self._speaker = speaker
        self._model.speaker_embedding(self._embedding, self._speaker)  # fail at start, not mid-reply
        self._model_dir = Path(model_dir).name

    def info(self) -> dict[str, Any]:
        return {"model": f"cosyvoice3:{self._model_dir}", "device": self._device,
                "mode": self._mode.value, "sample_rate": self._model.sample_rate,
                "max_stream_batch": self.max_stream_batch, "static_shapes": self._static}

    def handle(self, request: object) -> Iterator[VocoderStats]:
        if not isinstance(request, VocoderStatsRequest):
            raise unknown_request(request)  # audio goes through streams
        yield self._stats

    def open_stream(self, request: object) -> Any:
        if not isinstance(request, VocoderStreamRequest):
            raise unknown_request(request)
        if request.speaker is None:
            return self._model.new_stream(self._mode, embedding=self._embedding,
                                          speaker=self._speaker)
        if request.speaker not in self._model.speakers:
            raise BadRequest(f"unknown speaker {request.speaker!r}", param="speaker")
        return self._model.new_stream(self._mode, speaker=request.speaker)

    def push(self, state: Any, request: object) -> Iterator[PcmChunk]:
        if not isinstance(request, SpeechTokens):
            raise unknown_request(request)
        pcm = state.push(speech_codes(request.tokens))
        if len(pcm):
            yield PcmChunk(pcm, self._model.sample_rate)

    def finish(self, state: Any) -> Iterator[PcmChunk]:
        pcm = state.finalize()
        if len(pcm):
            yield PcmChunk(pcm, self._model.sample_rate)

    def step_streams(self, calls: Sequence[StreamCall]) -> list[list[Any] | ServingError]:
        """Pushes and finishes of different streams, advanced in shared batched steps."""
        from utils.cosyvoice3.batched_stream import StreamWork

        outcomes: list[list[Any] | ServingError] = [[] for _ in calls]
        work, where = [], []
        for i, call in enumerate(calls):
            if call.body is not None and not isinstance(call.body, SpeechTokens):
                outcomes[i] = unknown_request(call.body)
                continue
            try:
                tokens = speech_codes(call.body.tokens) if call.body is not None else []
            except BadRequest as exc:
                outcomes[i] = exc
                continue
            work.append(StreamWork(call.state, tokens, finalize=call.body is None))
            where.append(i)
        for i, pcm in zip(where, self._batched.advance(work), strict=True):
            if isinstance(pcm, Exception):  # only this stream failed (e.g. past the 300 s noise)
                outcomes[i] = EngineError(f"{type(pcm).__name__}: {pcm}")
            elif len(pcm):
                outcomes[i] = [PcmChunk(pcm, self._model.sample_rate)]
        s = self._stats
        self._stats = VocoderStats(s.batches + 1, s.calls + len(calls), max(s.largest, len(calls)))
        return outcomes

    def close(self, state: Any) -> None:
        if self._static:
            self._batched.drop(state)  # its slot; otherwise a stream holds only tensors


def _batcher(model: Any, max_rows: int, static_shapes: bool) -> Any:
    """The worker's BatchedToken2Wav, or its StaticToken2Wav (imported here: torch stays out
    of the processes that only import the request types)."""
    from utils.cosyvoice3.batched_stream import BatchedToken2Wav
    from utils.cosyvoice3.static_flow import StaticVocoderConfig
    from utils.cosyvoice3.static_token2wav import StaticToken2Wav
    from utils.funaudiochat.static_decode import buckets_up_to

    if not static_shapes:
        return BatchedToken2Wav(model, max_rows=max_rows)
    config = StaticVocoderConfig(batch_buckets=buckets_up_to(max_rows),
                                 max_streams=max_rows + STATIC_SPARE_SLOTS,
                                 cuda_graphs=True)  # off CUDA the static steps run eagerly
    return StaticToken2Wav(model, config=config)


def speech_codes(tokens: object) -> list[int]:
    """Only codebook entries are audio; BOS/EOS/pad ids (>= 6561) are control tokens."""
    if not isinstance(tokens, (tuple, list)):
        raise BadRequest("speech tokens must be a sequence of integers", param="tokens")
    codes: list[int] = []
    for token in tokens:
        if isinstance(token, bool) or not isinstance(token, (int, np.integer)):
            raise BadRequest(f"speech tokens must be integers, got {type(token).__name__}",
                             param="tokens")
        if 0 <= token < SPEECH_CODEBOOK:
            codes.append(int(token))
    return codes
