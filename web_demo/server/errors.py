"""Exception hierarchy shared by the servers, the engines and the worker runtime.

Each class says how it reaches a client: an HTTP status, a 0x05 frame, or a closed socket.
"""

from __future__ import annotations


class ServingError(Exception):
    """Base class. `retryable` says whether the same request may succeed if sent again."""

    http_status = 500
    retryable = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class ProtocolError(ServingError):
    """A malformed client frame: answered with a 0x05 frame, the connection stays up."""

    http_status = 400


class BadRequest(ServingError):
    http_status = 400


class PayloadTooLarge(BadRequest):
    http_status = 413


class EngineBusy(ServingError):
    """Capacity reached; HTTP answers 503 with Retry-After."""

    http_status = 503
    retryable = True


class EngineError(ServingError):
    """One request failed inside an engine or a worker; others are unaffected."""

    http_status = 500


class WorkerDied(EngineError):
    """The worker process serving the request exited; it is being restarted."""

    http_status = 503
    retryable = True


class EngineDead(ServingError):
    """The engine cannot recover: close connections and report unhealthy."""

    http_status = 503
