"""The HTTP edge every service shares: request ids and logs, API keys, admission, errors.

Order (outermost first): `request_log` times and logs every request under a request id;
`render_errors` turns every failure -- our ServingErrors, aiohttp's own 404/405/413, and
crashes -- into the one JSON error body; `require_api_key` guards every route but the
public ones; `admit` refuses new work while loading or draining.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from web_demo.server.errors import ServingError, Unauthorized, error_body, error_from_status
from web_demo.server.lifecycle import Lifecycle
from web_demo.server.metrics import Metrics

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID = web.RequestKey("request_id", str)
# path -> fields a route's error bodies carry beside "error" (e.g. /api/transcribe's success)
ERROR_EXTRAS = web.AppKey("error_extras", dict[str, dict[str, Any]])
PUBLIC_PATHS = ("/health", "/stream/v1/asr/health", "/", "/favicon.ico")  # and /static/ files
CLIENT_CLOSED = 499  # nginx's status for a request whose client closed the connection first
QUIET_PATHS = ("/health", "/stream/v1/asr/health", "/metrics")  # probes and scrapers: logged at DEBUG only


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith("/static/")


def route_name(request: web.Request) -> str:
    """The route template (never the raw path: it is unbounded and may carry data)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def error_response(error: ServingError, extra: dict[str, Any] | None = None) -> web.Response:
    headers = {}
    if error.retry_after_s is not None:
        headers[hdrs.RETRY_AFTER] = str(error.retry_after_s)
    if isinstance(error, Unauthorized):
        headers[hdrs.WWW_AUTHENTICATE] = "Bearer"
    body = error_body(str(error), kind=error.kind, status=error.http_status, param=error.param)
    return web.json_response({**body, **(extra or {})}, status=error.http_status, headers=headers)


def request_log(metrics: Metrics) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        rid = _request_id(request)
        request[REQUEST_ID] = rid
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            response.headers["X-Request-Id"] = rid
            return response
        except asyncio.CancelledError:
            status = CLIENT_CLOSED  # the client hung up (handler cancellation): not our failure
            raise
        finally:
            seconds = time.perf_counter() - started
            route = route_name(request)
            metrics.requests.labels(route, request.method, str(status)).observe(seconds)
            level = logging.DEBUG if request.path in QUIET_PATHS else logging.INFO
            # The path only: query strings may hold ?api_key=, which must never be logged.
            logger.log(level, "request id=%s method=%s path=%s status=%d ms=%.1f peer=%s",
                       rid, request.method, request.path[:200], status, seconds * 1000,
                       request.remote)
    return middleware


def render_errors(metrics: Metrics) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ServingError as exc:
            error: ServingError = exc
        except web.HTTPException as exc:
            if exc.status < 400:
                raise  # redirects are not errors
            error = error_from_status(exc.status, exc.reason)
        except Exception:
            logger.exception("request id=%s path=%s crashed", request.get(REQUEST_ID), request.path[:200])
            error = ServingError("internal server error")
        metrics.errors.labels(error.kind).inc()
        return error_response(error, request.app.get(ERROR_EXTRAS, {}).get(request.path))
    return middleware


def require_api_key(api_key: str | None) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if api_key is not None and not is_public(request.path) and not key_matches(request, api_key):
            raise Unauthorized("missing or wrong API key (send Authorization: Bearer KEY)")
        return await handler(request)
    return middleware


def key_matches(request: web.Request, api_key: str) -> bool:
    """Bearer header; WebSocket upgrades may use ?api_key= (browsers cannot set the header)."""
    scheme, _, offered = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    if scheme.lower() != "bearer":
        offered = ""
    if not offered and _is_websocket(request):
        offered = request.query.get("api_key", "")
    return bool(offered) and hmac.compare_digest(offered.strip().encode(), api_key.encode())


def admit(lifecycle: Lifecycle) -> Middleware:
    """HTTP work is refused while loading or draining; admitted work is waited for by a drain.

    WebSocket routes answer refusals in their own protocol (0x05 frame + close 1013)."""
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_public(request.path) or request.path == "/metrics" or _is_websocket(request):
            return await handler(request)
        refusal = lifecycle.refusal()
        if refusal is not None:
            raise refusal
        with lifecycle.work():
            return await handler(request)
    return middleware


def _is_websocket(request: web.Request) -> bool:
    return request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"


def _request_id(request: web.Request) -> str:
    """A caller's X-Request-Id is kept when it is short and plain (it ends up in logs)."""
    offered = request.headers.get("X-Request-Id", "")
    if 0 < len(offered) <= 64 and offered.replace("-", "").isalnum():
        return offered
    return uuid.uuid4().hex[:16]
