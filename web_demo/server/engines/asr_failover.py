"""ASR failover: one AsrEngine over a primary engine and its fallbacks (failover.py): a
transcription goes to the first member that can serve and moves on only when it could not.
"""

from __future__ import annotations

from web_demo.server.engines.base import AsrEngine, Transcription, TranscriptionRequest
from web_demo.server.engines.failover import FailoverGroup


class FailoverAsrEngine(FailoverGroup[AsrEngine]):
    """An AsrEngine over `engines` in order (primary first): see failover.py."""

    kind = "ASR"

    async def transcribe(self, request: TranscriptionRequest) -> Transcription:
        return await self._first(lambda engine: engine.transcribe(request))
