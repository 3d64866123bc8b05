"""Failover of one request over a primary engine and its fallbacks, each behind a breaker.

Shared by the ASR and TTS services (asr_failover.py, tts_failover.py, which decide how one
request goes through the members). A request goes to the first member whose circuit breaker is
closed and moves on only when that member could not serve (`is_unavailable`: a remote that is
down, slow, 5xx, 429 or answering garbage; a local worker that died), never when the input was
at fault: a BadRequest from one engine would be a BadRequest from the next. A breaker opens
after consecutive failures; open members are skipped, and a background task probes them every
`probe_interval_s` and closes the breaker once the probe answers. Engines without probe()
(local workers) simply get requests again one interval after their breaker opened.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from web_demo.server.engines.remote_asr import RemoteDown, RemoteUnavailable
from web_demo.server.errors import EngineDead, ServingError, WorkerDied

logger = logging.getLogger(__name__)
_T = TypeVar("_T")


class Engine(Protocol):
    """What a member needs: a name, a lifetime and a health report."""

    name: str

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def health(self) -> dict[str, Any]: ...


E = TypeVar("E", bound=Engine)


class AllEnginesDown(RemoteUnavailable):
    """Every engine of a failover group is down (or just failed); names each and its last error.

    A RemoteUnavailable itself, so a failover group can be a fallback of another."""

    http_status = 503
    kind = "engines_unavailable"
    retry_after_s = 5  # about one probe interval: when a recovered engine is noticed


# Errors that say nothing answers at all: the next request would fail the same way.
_DOWN_ERRORS = (RemoteDown, AllEnginesDown, WorkerDied, EngineDead)


def is_unavailable(error: BaseException) -> bool:
    """Whether another engine should get the request (the engine failed, not the input)."""
    return isinstance(error, (RemoteUnavailable, WorkerDied, EngineDead))


@runtime_checkable
class ProbedEngine(Protocol):
    """An engine that can check its own remote cheaply (the remote engines in remote_asr.py)."""

    async def probe(self) -> bool: ...


class CircuitBreaker:
    """Whether one engine gets requests: closed, yes; open, it is skipped until a probe answers.

    Opens after `down_failures` consecutive failures when any of them says nothing answers
    (connection refused, a dead worker), else after `error_failures` (5xx, 429, timeouts,
    garbage), which may be one bad request or a blip rather than an outage.
    """

    def __init__(self, *, down_failures: int = 1, error_failures: int = 3) -> None:
        self._down_failures = down_failures
        self._error_failures = error_failures
        self._saw_down = False
        self.failures = 0  # consecutive
        self.is_open = False
        self.last_error: str | None = None

    def record_failure(self, error: ServingError) -> bool:
        """Counts a failure; True when this one opened the breaker."""
        self.failures += 1
        self.last_error = str(error)
        self._saw_down = self._saw_down or isinstance(error, _DOWN_ERRORS)
        threshold = self._down_failures if self._saw_down else self._error_failures
        if self.is_open or self.failures < threshold:
            return False
        self.is_open = True
        return True

    def trip(self, reason: str) -> None:
        """Opens at once: the engine was found down without a request (at start)."""
        self.is_open, self.last_error = True, reason

    def close(self) -> None:
        self.failures, self._saw_down, self.is_open, self.last_error = 0, False, False, None


def reported_status(raw: dict[str, Any]) -> str:
    """An engine's own view: remote engines say "status", worker-backed ones "alive"."""
    if "status" in raw:
        return str(raw["status"])
    return "healthy" if raw.get("alive", True) else "degraded"


@dataclass
class Member(Generic[E]):
    engine: E
    breaker: CircuitBreaker


class FailoverGroup(Generic[E]):
    """Members in order (primary first), their breakers and the probe task. Owns the engines:
    start() starts them and the task, aclose() stops the task and closes them. `kind` ("ASR",
    "TTS") only names them in logs."""

    kind = ""

    def __init__(self, *, name: str, engines: Sequence[E], probe_interval_s: float = 5.0,
                 down_failures: int = 1, error_failures: int = 3) -> None:
        if not engines:
            raise ValueError("a failover group needs at least one engine")
        self.name = name
        self._members = [Member(e, CircuitBreaker(down_failures=down_failures,
                                                  error_failures=error_failures)) for e in engines]
        self._probe_interval_s = probe_interval_s
        self._some_open = asyncio.Event()  # wakes the probe task; idle while all are closed
        self._probe_task: asyncio.Task[None] | None = None

    @property
    def engines(self) -> list[E]:
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
                logger.exception("%s: closing %s engine %s failed", self.name, self.kind, member.engine.name)

    def _available(self) -> Iterator[Member[E]]:
        """The members that get requests now, in order."""
        return (m for m in self._members if not m.breaker.is_open)

    async def _first(self, call: Callable[[E], Awaitable[_T]]) -> _T:
        """`call` on the first member that can serve; AllEnginesDown when none can."""
        for member in self._available():
            try:
                result = await call(member.engine)
            except ServingError as exc:
                if not is_unavailable(exc):
                    raise
                self._failed(member, exc)
                continue
            member.breaker.close()
            return result
        raise self._all_down()

    def _failed(self, member: Member[E], error: ServingError, *, moving_on: bool = True) -> None:
        opened = member.breaker.record_failure(error)
        then = "; trying the next one" if moving_on else " after its first output; the error stands"
        logger.warning("%s: %s engine %s failed (%s)%s%s", self.name, self.kind, member.engine.name,
                       error, then, "; skipping it until its probe answers" if opened else "")
        if opened:
            self._some_open.set()

    def _all_down(self) -> AllEnginesDown:
        states = "; ".join(f"{m.engine.name} ({'down' if m.breaker.is_open else 'failed'}: "
                           f"{m.breaker.last_error})" for m in self._members)
        return AllEnginesDown(f"no {self.kind} engine of {self.name} can serve now: {states}")

    async def _probe_loop(self) -> None:
        while True:
            await self._some_open.wait()
            await asyncio.sleep(self._probe_interval_s)
            await asyncio.gather(*(self._probe(m) for m in self._members if m.breaker.is_open))
            if not any(m.breaker.is_open for m in self._members):
                self._some_open.clear()

    async def _probe(self, member: Member[E]) -> None:
        engine: object = member.engine  # (E's bound has no probe(); remote engines add one)
        name = member.engine.name
        if isinstance(engine, ProbedEngine):
            try:
                answered = await engine.probe()
            except Exception:  # a broken probe must not end the task that closes breakers
                logger.exception("%s: probing %s engine %s failed", self.name, self.kind, name)
                return
            if not answered:
                return
        member.breaker.close()
        logger.info("%s: %s engine %s is back; it gets requests again", self.name, self.kind, name)

    def health(self) -> dict[str, Any]:
        """healthy: every engine is up; dead: every breaker is open; else degraded. `serving`
        names the engine the next request goes to; `workers` holds the local members' worker
        reports, a nested group's included (for /metrics; remote members have none)."""
        raws = [m.engine.health() for m in self._members]  # once each: a pool's report is not free
        engines = [_member_health(m, raw) for m, raw in zip(self._members, raws, strict=True)]
        if all(m.breaker.is_open for m in self._members):
            status = "dead"
        elif all(e["breaker"] == "closed" and e["status"] == "healthy" for e in engines):
            status = "healthy"
        else:
            status = "degraded"
        at = next((i for i, e in enumerate(engines) if e["breaker"] == "closed"), None)
        shown = engines[0 if at is None else at]
        workers: dict[str, Any] = {}
        for member, raw in zip(self._members, raws, strict=True):
            if "alive" in raw:  # a worker-backed member's supervisor or pool report
                workers[member.engine.name] = raw
            workers.update(raw.get("workers") or {})
        return {"status": status, "model": shown["model"], "device": shown["device"],
                "engine": "failover", "serving": None if at is None else shown["engine"],
                **self._serving_fields(raws[0 if at is None else at]),
                "engines": engines, "workers": workers}

    def _serving_fields(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Fields of the serving member's report that a service's flat /health shows."""
        return {}


def _member_health(member: Member[Any], raw: dict[str, Any]) -> dict[str, Any]:
    return {"engine": member.engine.name, "breaker": "open" if member.breaker.is_open else "closed",
            "failures": member.breaker.failures, "status": reported_status(raw),
            "model": raw.get("model"), "device": raw.get("device"),
            "last_error": member.breaker.last_error or raw.get("last_error")}


class SharedEngine(Generic[E]):
    """One engine used by several owners (a model served itself and as another's fallback):
    the first start() starts it, the last aclose() closes it. Subclasses pass requests through."""

    def __init__(self, engine: E) -> None:
        self.engine = engine
        self.name = engine.name
        self._owners = 0
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._lock:
            if self._owners == 0:
                await self.engine.start()
            self._owners += 1

    async def aclose(self) -> None:
        async with self._lock:
            if self._owners == 0:
                return
            self._owners -= 1
            if self._owners == 0:
                await self.engine.aclose()

    async def probe(self) -> bool:
        """The engine's own probe; one without (a local worker) counts as answering."""
        probe = getattr(self.engine, "probe", None)
        return True if probe is None else bool(await probe())

    def health(self) -> dict[str, Any]:
        return self.engine.health()
