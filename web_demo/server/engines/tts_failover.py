"""TTS failover: one TtsEngine over a primary engine and its fallbacks, each behind a breaker.

The ASR service's failover (asr_failover.py) for speech that streams out: a synthesis goes to
the first engine whose circuit breaker is closed and moves on to the next only when that engine
could not serve (`is_unavailable`) before it gave any audio. Once a chunk has gone to the
caller, an error propagates: audio cannot be taken back, and the next engine would start the
sentence again in another voice. An error in the input (BadRequest) never moves on, because the
next engine would reject it too. Open breakers are probed in the background every
`probe_interval_s`; engines without probe() (local workers) get requests again one interval
after their breaker opened.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from web_demo.server.engines.asr_failover import (
    AllEnginesDown,
    CircuitBreaker,
    ProbedEngine,
    is_unavailable,
)
from web_demo.server.engines.base import PcmChunk, SpeakerCreate, SynthesisRequest, TtsEngine
from web_demo.server.errors import ServingError

logger = logging.getLogger(__name__)
_T = TypeVar("_T")


@dataclass
class _Member:
    engine: TtsEngine
    breaker: CircuitBreaker


def reported_status(raw: dict[str, Any]) -> str:
    """An engine's own view: remote engines say "status", worker-backed ones "alive"."""
    if "status" in raw:
        return str(raw["status"])
    return "healthy" if raw.get("alive", True) else "degraded"


class FailoverTtsEngine:
    """A TtsEngine over `engines` in order (primary first). Owns them and the probe task:
    start() starts both, aclose() stops the task and closes the engines.

    Its native rate is the primary's; a request that names no rate is asked at that rate from
    every member, so a fallback's audio never changes the rate in the middle of a response."""

    def __init__(self, *, name: str, engines: Sequence[TtsEngine], probe_interval_s: float = 5.0,
                 down_failures: int = 1, error_failures: int = 3) -> None:
        if not engines:
            raise ValueError("a failover group needs at least one engine")
        self.name = name
        self.sample_rate = engines[0].sample_rate
        self._members = [_Member(e, CircuitBreaker(down_failures=down_failures,
                                                   error_failures=error_failures)) for e in engines]
        self._probe_interval_s = probe_interval_s
        self._some_open = asyncio.Event()  # wakes the probe task; idle while all are closed
        self._probe_task: asyncio.Task[None] | None = None

    @property
    def engines(self) -> list[TtsEngine]:
        return [m.engine for m in self._members]

    async def start(self) -> None:
        """Starts every engine; a remote that is down starts degraded (breaker open), while an
        engine whose start() raises (a local model that cannot load) fails the whole group."""
        outcomes = await asyncio.gather(*(m.engine.start() for m in self._members),
                                        return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors:
            await self._close_engines()
            raise errors[0]
        for member in self._members:
            raw = member.engine.health()
            if reported_status(raw) != "healthy":
                member.breaker.trip(str(raw.get("last_error") or "down at start"))
                self._some_open.set()
        self._probe_task = asyncio.create_task(self._probe_loop(), name=f"{self.name}-probe")

    async def aclose(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            await asyncio.wait([self._probe_task])  # never raises; a cancel of aclose() still does
            self._probe_task = None
        await self._close_engines()

    async def _close_engines(self) -> None:
        for member in self._members:
            try:
                await member.engine.aclose()
            except Exception:
                logger.exception("%s: closing TTS engine %s failed", self.name, member.engine.name)

    async def synthesize(self, request: SynthesisRequest) -> AsyncGenerator[PcmChunk, None]:
        """The first engine that can serve streams the audio. The caller closes the generator
        (aclosing); that closes the member's generator at once, which stops its synthesis."""
        if request.sample_rate is None:
            request = replace(request, sample_rate=self.sample_rate)
        for member in self._members:
            if member.breaker.is_open:
                continue
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
        raise AllEnginesDown(self._all_down_message())

    async def speakers(self) -> list[str]:
        """The speakers of the first engine that answers."""
        return await self._first(lambda engine: engine.speakers())

    async def add_speaker(self, request: SpeakerCreate) -> str:
        """Saved on the first engine that answers (which may be a fallback that cannot clone:
        its BadRequest is the answer)."""
        return await self._first(lambda engine: engine.add_speaker(request))

    async def _first(self, call: Callable[[TtsEngine], Awaitable[_T]]) -> _T:
        for member in self._members:
            if member.breaker.is_open:
                continue
            try:
                result = await call(member.engine)
            except ServingError as exc:
                if not is_unavailable(exc):
                    raise
                self._failed(member, exc, moving_on=True)
                continue
            member.breaker.close()
            return result
        raise AllEnginesDown(self._all_down_message())

    def _failed(self, member: _Member, error: ServingError, *, moving_on: bool) -> None:
        opened = member.breaker.record_failure(error)
        then = "; trying the next one" if moving_on else " after its first audio; the error stands"
        logger.warning("%s: TTS engine %s failed (%s)%s%s", self.name, member.engine.name, error, then,
                       "; skipping it until its probe answers" if opened else "")
        if opened:
            self._some_open.set()

    def _all_down_message(self) -> str:
        states = "; ".join(f"{m.engine.name} ({'down' if m.breaker.is_open else 'failed'}: "
                           f"{m.breaker.last_error})" for m in self._members)
        return f"no TTS engine of {self.name} can serve now: {states}"

    async def _probe_loop(self) -> None:
        while True:
            await self._some_open.wait()
            await asyncio.sleep(self._probe_interval_s)
            await asyncio.gather(*(self._probe(m) for m in self._members if m.breaker.is_open))
            if not any(m.breaker.is_open for m in self._members):
                self._some_open.clear()

    async def _probe(self, member: _Member) -> None:
        engine = member.engine
        if isinstance(engine, ProbedEngine):
            try:
                answered = await engine.probe()
            except Exception:  # a broken probe must not end the task that closes breakers
                logger.exception("%s: probing TTS engine %s failed", self.name, engine.name)
                return
            if not answered:
                return
        member.breaker.close()
        logger.info("%s: TTS engine %s is back; it gets requests again", self.name, engine.name)

    def health(self) -> dict[str, Any]:
        """healthy: every engine is up; dead: every breaker is open; else degraded. `serving`
        names the engine the next request goes to; `workers` holds the local members' worker
        reports (for /metrics; remote members have none)."""
        raws = [m.engine.health() for m in self._members]  # once each: a pool's report is not free
        engines = [self._member_health(m, raw) for m, raw in zip(self._members, raws, strict=True)]
        if all(m.breaker.is_open for m in self._members):
            status = "dead"
        elif all(e["breaker"] == "closed" and e["status"] == "healthy" for e in engines):
            status = "healthy"
        else:
            status = "degraded"
        at = next((i for i, e in enumerate(engines) if e["breaker"] == "closed"), None)
        serving, shown = (None, engines[0]) if at is None else (engines[at], engines[at])
        workers: dict[str, Any] = {}
        for member, raw in zip(self._members, raws, strict=True):
            if "alive" in raw:  # a worker-backed member's supervisor or pool report
                workers[member.engine.name] = raw
            workers.update(raw.get("workers") or {})  # a member that is a group itself
        return {"status": status, "model": shown["model"], "device": shown["device"],
                "engine": "failover", "serving": serving["engine"] if serving else None,
                # the TTS service's flat /health field, of the engine that serves now
                "vllm_enabled": bool(raws[at or 0].get("vllm_enabled", False)),
                "engines": engines, "workers": workers}

    @staticmethod
    def _member_health(member: _Member, raw: dict[str, Any]) -> dict[str, Any]:
        return {"engine": member.engine.name, "breaker": "open" if member.breaker.is_open else "closed",
                "failures": member.breaker.failures, "status": reported_status(raw),
                "model": raw.get("model"), "device": raw.get("device"),
                "last_error": member.breaker.last_error or raw.get("last_error")}
