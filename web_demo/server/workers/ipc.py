"""Messages between the server and its worker subprocesses.

Each message is a small frozen dataclass sent whole over a multiprocessing Pipe (pickle,
length-prefixed by Connection). Requests and their streamed results are matched by
`request_id`, so concurrent sessions never take each other's results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


# parent -> child
@dataclass(frozen=True)
class Request:
    request_id: int
    method: str
    payload: Any


@dataclass(frozen=True)
class Cancel:
    request_id: int


@dataclass(frozen=True)
class Shutdown:
    pass


# child -> parent
@dataclass(frozen=True)
class Ready:
    info: dict[str, Any]


@dataclass(frozen=True)
class InitFailed:
    error: str


@dataclass(frozen=True)
class Chunk:
    request_id: int
    payload: Any


@dataclass(frozen=True)
class Done:
    request_id: int


@dataclass(frozen=True)
class Failed:
    request_id: int
    error: str
    retryable: bool = False


ToChild = Request | Cancel | Shutdown
ToParent = Ready | InitFailed | Chunk | Done | Failed
