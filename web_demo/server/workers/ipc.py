"""Messages between the server and its worker subprocesses.

Each message is a small frozen dataclass sent whole over a multiprocessing Pipe (pickle,
length-prefixed by Connection). A request carries a typed request object (e.g.
TranscriptionRequest) and its results are typed too (e.g. Transcription, PcmChunk);
requests and their streamed results are matched by `request_id`, so concurrent sessions
never take each other's results. Errors cross as their `kind` name, so a handler's
BadRequest is a BadRequest in the parent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from web_demo.server.errors import EngineError, ServingError, error_from_kind

# ---- parent -> child --------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    """One request served by the handler's `handle` (or `handle_batch`)."""
    request_id: int
    body: Any  # a request dataclass; the handler dispatches on its type


@dataclass(frozen=True)
class OpenStream:
    """Creates stream state in the child (handler.open_stream); answered by Done or Failed."""
    request_id: int
    stream_id: int
    body: Any


@dataclass(frozen=True)
class StreamPush:
    request_id: int
    stream_id: int
    body: Any


@dataclass(frozen=True)
class StreamFinish:
    """Yields the stream's tail; the child drops the stream afterwards."""
    request_id: int
    stream_id: int


@dataclass(frozen=True)
class CloseStream:
    """Drops a stream without its tail (barge-in, failure); never answered."""
    stream_id: int


@dataclass(frozen=True)
class Cancel:
    request_id: int


@dataclass(frozen=True)
class Ping:
    seq: int


@dataclass(frozen=True)
class Shutdown:
    pass


# ---- child -> parent --------------------------------------------------------------------

@dataclass(frozen=True)
class Ready:
    info: dict[str, Any]


@dataclass(frozen=True)
class InitFailed:
    error: str


@dataclass(frozen=True)
class Result:
    request_id: int
    result: Any  # a result dataclass


@dataclass(frozen=True)
class Done:
    request_id: int


@dataclass(frozen=True)
class Failed:
    request_id: int
    kind: str  # ServingError.kind; "engine_error" for anything unexpected
    message: str
    retryable: bool = False
    param: str | None = None

    def error(self) -> ServingError:
        return error_from_kind(self.kind, self.message, retryable=self.retryable, param=self.param)


@dataclass(frozen=True)
class Pong:
    """Answered by the child's reader thread, so it arrives even while a handler computes."""
    seq: int
    step_s: float | None  # how long the current handler step has run; None = idle


def failure(request_id: int, exc: BaseException) -> Failed:
    """What the parent needs to rebuild `exc`: a ServingError keeps its kind and param."""
    if isinstance(exc, ServingError):
        return Failed(request_id, exc.kind, str(exc), exc.retryable, exc.param)
    return Failed(request_id, EngineError.kind, f"{type(exc).__name__}: {exc}")


RequestMessage = Request | OpenStream | StreamPush | StreamFinish
ToChild = RequestMessage | CloseStream | Cancel | Ping | Shutdown
ToParent = Ready | InitFailed | Result | Done | Failed | Pong
