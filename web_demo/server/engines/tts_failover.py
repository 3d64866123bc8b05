"""TTS failover: one TtsEngine over a primary engine and its fallbacks, each behind a breaker.

The failover group (failover.py) for speech that streams out: a synthesis goes to
the first engine whose circuit breaker is closed and moves on to the next only when that engine
could not serve (`is_unavailable`) before it gave any audio. Once a chunk has gone to the
caller, an error propagates: audio cannot be taken back, and the next engine would start the
sentence again in another voice. An error in the input (BadRequest) never moves on, because the
next engine would reject it too. Open breakers are probed in the background every
`probe_interval_s`; engines without probe() (local workers) get requests again one interval
after their breaker opened.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import replace
from typing import Any

from web_demo.server.engines.base import PcmChunk, SpeakerCreate, SynthesisRequest, TtsEngine
from web_demo.server.engines.failover import FailoverGroup, is_unavailable
from web_demo.server.errors import ServingError


class FailoverTtsEngine(FailoverGroup[TtsEngine]):
    """A TtsEngine over `engines` in order (primary first): see failover.py.

    Its native rate is the primary's; a request that names no rate is asked at that rate from
    every member, so a fallback's audio never changes the rate in the middle of a response."""

    kind = "TTS"

    def __init__(self, *, name: str, engines: Sequence[TtsEngine], **kwargs: Any) -> None:
        super().__init__(name=name, engines=engines, **kwargs)
        self.sample_rate = engines[0].sample_rate

    async def synthesize(self, request: SynthesisRequest) -> AsyncGenerator[PcmChunk, None]:
        """The first engine that can serve streams the audio. The caller closes the generator
        (aclosing); that closes the member's generator at once, which stops its synthesis."""
        if request.sample_rate is None:
            request = replace(request, sample_rate=self.sample_rate)
        for member in self._available():
            started = False
            try:
                async with aclosing(member.engine.synthesize(request)) as chunks:
                    async for chunk in chunks:
                        started = True
                        yield chunk
            except ServingError as exc:
                if not is_unavailable(exc):
                    raise
                self._failed(member, exc, moving_on=not started)
                if started:
                    raise
                continue
            member.breaker.close()
            return
        raise self._all_down()

    async def speakers(self) -> list[str]:
        """The speakers of the first engine that answers."""
        return await self._first(lambda engine: engine.speakers())

    async def add_speaker(self, request: SpeakerCreate) -> str:
        """Saved on the first engine that answers (which may be a fallback that cannot clone:
        its BadRequest is the answer)."""
        return await self._first(lambda engine: engine.add_speaker(request))

    def _serving_fields(self, raw: dict[str, Any]) -> dict[str, Any]:
        # the TTS service's flat /health field, of the engine that serves now
        return {"vllm_enabled": bool(raw.get("vllm_enabled", False))}
