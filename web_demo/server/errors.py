"""Exception hierarchy shared by the servers, the engines and the worker runtime.

Each class says how it reaches a client: an HTTP status with the one JSON error body
(`error_body`), a 0x05 frame on /api/chat, or a closed socket. `kind` is the stable name
that crosses the worker pipe (so a child's BadRequest is a BadRequest in the parent) and
the `type` field of the JSON body.
"""

from __future__ import annotations

from typing import Any


class ServingError(Exception):
    """Base class. `retryable` says whether the same request may succeed if sent again."""

    http_status = 500
    kind = "internal_error"
    retryable = False
    retry_after_s: int | None = None  # sent as Retry-After when set

    def __init__(self, message: str, *, retryable: bool | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable
        self.param = param  # the request field at fault, when there is one

    @property
    def message(self) -> str:
        return str(self)


class ProtocolError(ServingError):
    """A malformed client frame: answered with a 0x05 frame, the connection stays up."""

    http_status = 400
    kind = "protocol_error"


class BadRequest(ServingError):
    """The input cannot be served as given (bad field, unknown voice, undecodable audio)."""

    http_status = 400
    kind = "invalid_request_error"


class PayloadTooLarge(BadRequest):
    http_status = 413
    kind = "payload_too_large"


class Unauthorized(ServingError):
    http_status = 401
    kind = "unauthorized"


class NotFound(BadRequest):
    http_status = 404
    kind = "not_found"


class ModelNotFound(NotFound):
    """A model id the service does not serve (OpenAI answers 404 with this code)."""

    kind = "model_not_found"


class MethodNotAllowed(BadRequest):
    http_status = 405
    kind = "method_not_allowed"


class EngineBusy(ServingError):
    """Capacity reached (sessions, pending requests); HTTP answers 503 with Retry-After."""

    http_status = 503
    kind = "engine_busy"
    retryable = True
    retry_after_s = 1


class Draining(EngineBusy):
    """The server is shutting down gracefully and admits no new work."""

    kind = "draining"
    retry_after_s = 5


class EngineError(ServingError):
    """One request failed inside an engine or a worker; others are unaffected."""

    http_status = 500
    kind = "engine_error"


class RequestTimeout(EngineError):
    """A request passed its deadline; it was cancelled where it ran."""

    http_status = 504
    kind = "timeout"
    retryable = True


class WorkerDied(EngineError):
    """The worker process serving the request exited (or hung and was killed); it restarts."""

    http_status = 503
    kind = "worker_died"
    retryable = True


class EngineDead(ServingError):
    """The engine cannot recover: close connections and report unhealthy."""

    http_status = 503
    kind = "engine_dead"


_KINDS: dict[str, type[ServingError]] = {}


def _register(cls: type[ServingError]) -> None:
    _KINDS[cls.kind] = cls
    for sub in cls.__subclasses__():
        _register(sub)


_register(ServingError)


def error_from_kind(kind: str, message: str, *, retryable: bool | None = None,
                    param: str | None = None) -> ServingError:
    """Rebuilds an error that crossed a process boundary by its `kind` name."""
    return _KINDS.get(kind, EngineError)(message, retryable=retryable, param=param)


def error_from_status(status: int, message: str) -> ServingError:
    """Our error for an HTTP status that aiohttp raised itself (unknown route, wrong method)."""
    by_status: dict[int, type[ServingError]] = {
        400: BadRequest, 401: Unauthorized, 404: NotFound, 405: MethodNotAllowed,
        413: PayloadTooLarge, 503: EngineBusy}
    if status in by_status:
        return by_status[status](message)
    error = ServingError(message)
    error.http_status, error.kind = status, "http_error"
    return error


def error_body(message: str, *, kind: str, status: int, param: str | None = None) -> dict[str, Any]:
    """The one JSON error shape of every HTTP route (OpenAI's and vLLM's ErrorResponse)."""
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}
