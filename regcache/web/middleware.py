"""The one place registry errors are rendered, plus the access log and request metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Awaitable, Callable
from urllib.parse import urlencode

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
            # 499 (nginx's "client closed request"): the connection ended before the
            # response was complete, whoever dropped it.
            status = response.status if response is not None else 499
            size = _body_bytes(request, response)
            route = request.get("route", "other")
            if metrics is not None:
                metrics.observe_request(route, request.method, status, seconds)
                metrics.observe_served(route, request.get("cache_result"), size)
            if access_enabled:
                _log_access(request, status, size, seconds)

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


def _body_bytes(request: web.Request, response: web.StreamResponse | None) -> int:
    """Body bytes sent. Every regcache response has a Content-Length, and `body_length`
    would count the headers but not sendfile's bytes (blob hits)."""
    if response is None or request.method == "HEAD" or response.status in (204, 304):
        return 0
    return response.content_length or 0


# Query parameters worth logging; anything else (a client could put a token there) is not.
_LOGGED_QUERY = ("ns", "n", "last", "artifactType")


def _log_path(request: web.Request) -> str:
    """The path as sent (still percent-encoded, so no control characters can reach the
    log) with only the known query parameters. Never credentials: they travel in headers,
    which are not logged."""
    path = request.raw_path.split("?", 1)[0][:1024]
    kept = [(k, v) for k, v in request.query.items() if k in _LOGGED_QUERY]
    return f"{path}?{urlencode(kept)}" if kept else path


def _log_access(request: web.Request, status: int, size: int, seconds: float) -> None:
    """One line per request: logfmt in the plain format, top-level keys in JSON."""
    fields = {
        "client": request.remote, "method": request.method, "path": _log_path(request),
        "status": status, "bytes": size, "duration_s": round(seconds, 6),
        "upstream": request.get("upstream"), "cache": request.get("cache_result"),
    }
    message = " ".join(f"{key}={_logfmt(value)}" for key, value in fields.items())
    access_log.info(message, extra={"access": fields})


def _logfmt(value: object) -> str:
    """A logfmt value: bare when safe, quoted otherwise, "-" for none (null in JSON)."""
    if value is None:
        return "-"
    text = str(value)
    if text and all(c.isprintable() and c not in ' "=' for c in text):
        return text
    return json.dumps(text)
