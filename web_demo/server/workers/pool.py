"""Several worker processes of one handler behind the surface of one (e.g. one per GPU)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from web_demo.server.config import WorkerConfig
from web_demo.server.workers.client import WorkerClient
from web_demo.server.workers.supervisor import WorkerStream, WorkerSupervisor

# Keys of a member's /health entry that describe its process, not the model it serves.
_PER_PROCESS = {"alive", "pid", "restarts", "pending", "last_exit", "device"}


class WorkerPool:
    """N supervisors of one handler, each with its own init kwargs.

    A request goes to the alive member with the fewest pending requests (ties rotate); a
    stream stays on the member that opened it. A dead member restarts on its own while the
    others serve.
    """

    def __init__(self, *, name: str, handler: str, members_init: Sequence[dict[str, Any]],
                 cfg: WorkerConfig = WorkerConfig()) -> None:
        if not members_init:
            raise ValueError("a worker pool needs at least one member")
        self.name = name
        self.members = tuple(
            WorkerSupervisor(name=f"{name}-{i}", handler=handler, init_kwargs=dict(init), cfg=cfg)
            for i, init in enumerate(members_init))
        self._turn = itertools.count()

    async def start(self) -> None:
        outcomes = await asyncio.gather(*(m.start() for m in self.members), return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors:  # all or nothing: a half-started pool would hide a broken device
            await self.aclose()
            raise errors[0]

    async def aclose(self) -> None:
        await asyncio.gather(*(m.aclose() for m in self.members))

    @property
    def alive(self) -> bool:
        return any(m.alive for m in self.members)

    @property
    def pending(self) -> int:
        return sum(m.pending for m in self.members)

    def health(self) -> dict[str, Any]:
        members = [m.health() for m in self.members]
        model = next((h for h in members if h["alive"]), members[0])
        return {**{k: v for k, v in model.items() if k not in _PER_PROCESS},
                "device": ",".join(str(h.get("device")) for h in members),
                "alive": self.alive, "pending": self.pending,
                "restarts": sum(h["restarts"] for h in members), "members": members}

    async def stream(self, request: object, *,
                     timeout_s: float | None = None) -> AsyncGenerator[Any, None]:
        # Picked on the first iteration, when the member counts the request as pending.
        member = self._pick()
        async with contextlib.aclosing(member.stream(request, timeout_s=timeout_s)) as results:
            async for result in results:
                yield result

    async def call(self, request: object, *, timeout_s: float | None = None) -> list[Any]:
        return await self._pick().call(request, timeout_s=timeout_s)

    def open_stream(self, request: object, *, timeout_s: float | None = None) -> WorkerStream:
        return self._pick().open_stream(request, timeout_s=timeout_s)

    def _pick(self) -> WorkerSupervisor:
        """Fewest pending among alive members; all members when none is (they restart)."""
        candidates = [m for m in self.members if m.alive] or list(self.members)
        first = next(self._turn) % len(candidates)
        rotated = candidates[first:] + candidates[:first]
        return min(rotated, key=lambda m: m.pending)


def make_worker(*, name: str, handler: str, init_kwargs: dict[str, Any],
                devices: Sequence[str] | None = None,
                cfg: WorkerConfig = WorkerConfig()) -> WorkerClient:
    """One supervisor, or a pool with one member per device (init_kwargs + its "device")."""
    if devices is not None and len(devices) > 1:
        return WorkerPool(name=name, handler=handler, cfg=cfg,
                          members_init=[{**init_kwargs, "device": d} for d in devices])
    if devices:
        init_kwargs = {**init_kwargs, "device": devices[0]}
    return WorkerSupervisor(name=name, handler=handler, init_kwargs=init_kwargs, cfg=cfg)
