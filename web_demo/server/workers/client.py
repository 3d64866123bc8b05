"""What engines hold: one supervised worker or a pool of them, indistinguishably."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, Protocol

from web_demo.server.workers.supervisor import WorkerStream


class WorkerClient(Protocol):
    """Satisfied by WorkerSupervisor (one process) and WorkerPool (several)."""

    name: str

    @property
    def alive(self) -> bool:
        """At least one process can serve a request now."""
        ...

    @property
    def pending(self) -> int: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def health(self) -> dict[str, Any]: ...

    def stream(self, request: object, *,
               timeout_s: float | None = None) -> AsyncGenerator[Any, None]:
        """Close it (contextlib.aclosing) when leaving early: that cancels it in the child."""
        ...

    async def call(self, request: object, *, timeout_s: float | None = None) -> list[Any]: ...

    def open_stream(self, request: object, *, timeout_s: float | None = None) -> WorkerStream: ...
