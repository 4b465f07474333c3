"""The one place registry errors are rendered, plus the access log and request metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Awaitable, Callable

from aiohttp import web

from regcache.errors import RegistryError
from regcache.metrics import Metrics

log = logging.getLogger("regcache.web")
access_log = logging.getLogger("regcache.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}

# aiohttp's own HTTP errors (no route, bad method, oversized header) as registry codes.
_HTTP_TO_CODE = {404: "NAME_UNKNOWN", 405: "UNSUPPORTED", 413: "UNSUPPORTED", 431: "UNSUPPORTED"}


def error_response(error: RegistryError) -> web.Response:
    """Render a RegistryError in distribution's JSON envelope (errcode.ServeJSON)."""
    return web.Response(
        status=error.status,
        body=json.dumps(error.to_envelope()).encode(),
        content_type="application/json",
        headers={**API_VERSION, **error.headers},
    )


def make_middleware(metrics: Metrics | None, access_enabled: bool) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def registry_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        response: web.StreamResponse | None = None
        try:
            response = await _render_errors(request, handler)
            # Send it here (aiohttp's own prepare/write_eof then do nothing), so that the
            # access log and metrics see the real duration and body size.
            await response.prepare(request)
            await response.write_eof()
            return response
        except (ConnectionError, asyncio.CancelledError):
            response = None
            raise
        finally:
            seconds = time.perf_counter() - started
            status = response.status if response is not None else 499
            route = request.get("route", "other")
            if metrics is not None:
                metrics.observe_request(route, request.method, status, seconds)
            if access_enabled:
                _log_access(request, response, status, seconds)

    return registry_middleware


async def _render_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RegistryError as error:
        return error_response(error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_TO_CODE.get(exc.status, "UNKNOWN")
        return error_response(RegistryError(code, exc.reason, status=exc.status))
    except (ConnectionResetError, ConnectionError):
        raise
    except Exception:
        if request.get("streaming"):
            raise  # headers are out: the connection is dropped, nothing to render
        log.exception("unhandled error for %s %s", request.method, request.path)
        return error_response(RegistryError("UNKNOWN", "internal error"))


def _log_access(request: web.Request, response: web.StreamResponse | None, status: int, seconds: float) -> None:
    size = response.body_length if response is not None else 0
    access_log.info(
        "%s %s %s %d %d %.4f %s %s",
        request.remote or "-", request.method, request.path, status, size, seconds,
        request.get("upstream", "-"), request.get("cache_result", "-"),
        extra={"access": {
            "client": request.remote, "method": request.method, "path": request.path,
            "ns": request.query.get("ns"), "status": status, "bytes": size,
            "duration_s": round(seconds, 6), "upstream": request.get("upstream"),
            "cache": request.get("cache_result"),
        }},
    )
