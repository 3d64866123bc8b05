"""What a worker subprocess serves: the handler API.

A handler is built once per process, inside the child, from an import path and init kwargs
(see process.py). It dispatches on the type of each request object; there are no method
strings. Two optional capabilities:

- batching: `max_batch > 1` and `handle_batch`; the serving loop hands it up to max_batch
  queued requests of one type at once (only what is already queued: it never waits to fill
  a batch);
- streams: `open_stream` / `push` / `finish` / `close` keep per-stream state (e.g. one
  vocoder stream per reply) that the child holds by stream id, at most `max_streams`;
- stream batching: `max_stream_batch > 1` and `step_streams`; the serving loop hands it the
  queued pushes and finishes of up to that many different streams at once (again only what
  is already queued; a stream's own messages keep their order).

Raise a ServingError (BadRequest for bad input) to fail one request with that kind; any
other exception fails it as an engine_error naming the exception.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from web_demo.server.errors import BadRequest, ServingError

DEFAULT_MAX_STREAMS = 256  # bounds the memory that abandoned streams can hold


class Handler(Protocol):
    def info(self) -> dict[str, Any]:
        """Model, device, sample rate...: merged into the worker's /health entry."""
        ...

    def handle(self, request: Any) -> Iterator[Any]:
        """Yields result objects; each `next()` is one step, timed by the hang detector."""
        ...


@runtime_checkable
class BatchHandler(Protocol):
    max_batch: int

    def handle_batch(self, requests: Sequence[Any]) -> list[list[Any] | ServingError]:
        """One entry per request, in order: its results, or the error that failed only it."""
        ...


@runtime_checkable
class StreamHandler(Protocol):
    def open_stream(self, request: Any) -> Any:
        """Returns the new stream's state object."""
        ...

    def push(self, state: Any, request: Any) -> Iterator[Any]: ...

    def finish(self, state: Any) -> Iterator[Any]:
        """Yields the tail; `close(state)` follows."""
        ...

    def close(self, state: Any) -> None: ...


@dataclass(frozen=True)
class StreamCall:
    """One stream's queued call inside a `step_streams` batch."""
    state: Any  # what open_stream returned
    body: Any | None  # the push's request; None = finish (yield the tail; close follows)


@runtime_checkable
class StreamBatchHandler(Protocol):
    max_stream_batch: int

    def step_streams(self, calls: Sequence[StreamCall]) -> list[list[Any] | ServingError]:
        """One entry per call, each of a different stream, in order: what `push` (or
        `finish`) would have yielded for it, or the error that failed only it."""
        ...


def unknown_request(request: object) -> BadRequest:
    """What a handler raises for a request type it does not serve."""
    return BadRequest(f"this worker does not serve {type(request).__name__} requests")
