"""Thin aiohttp handlers: parse the request, ask the cache, build the response.

Response headers follow distribution (wire-protocol.md 4.1-4.4): exact `Content-Type`,
explicit `Content-Length` (also on HEAD), `Docker-Content-Digest`, quoted `ETag`,
`Docker-Distribution-API-Version` everywhere. `/v2/` never answers with a 401 challenge
(dockerd would send its Docker Hub credentials to us, wire-protocol.md 1.5).
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from regcache.errors import RegistryError
from regcache.fill import FileRange, FillAborted
from regcache.mediatypes import OCI_INDEX, parse_accept
from regcache.metrics import Metrics
from regcache.proxy import LocalBlob, ManifestAnswer, PullThroughCache, RemoteBlob
from regcache.reference import looks_like_digest, parse_digest, validate_tag
from regcache.store import FsStore
from regcache.upstream.client import UpstreamClient
from regcache.web import filesend
from regcache.web.middleware import API_VERSION
from regcache.web.ranges import content_range, parse_range
from regcache.web.routing import Router, Target


@dataclass(frozen=True)
class AppState:
    """What handlers need; built once in `regcache.app`."""

    cache: PullThroughCache
    clients: dict[str, UpstreamClient]
    store: FsStore
    metrics: Metrics | None
    router: Router


STATE = web.AppKey("state", AppState)
READ_METHODS = ("GET", "HEAD")


async def registry_api_handler(request: web.Request) -> web.StreamResponse:
    """Everything under /v2/: the read API, and 405 UNSUPPORTED for every write."""
    state = request.app[STATE]
    if request.method not in READ_METHODS:
        raise RegistryError("UNSUPPORTED", "this registry is a read-only pull-through cache")
    path = request.raw_path.split("?", 1)[0]
    if path in ("/v2", "/v2/"):
        request["route"] = "base"
        return web.json_response({}, headers=API_VERSION)
    target = state.router.resolve(path, request.query.get("ns"))
    request["upstream"] = target.upstream.name
    if target.kind == "manifests":
        return await manifest(request, state, target)
    if target.kind == "blobs":
        return await blob(request, state, target)
    if target.kind == "tags":
        return await tags_list(request, state, target)
    return await referrers(request, state, target)


async def manifest(request: web.Request, state: AppState, target: Target) -> web.StreamResponse:
    request["route"] = "manifest"
    head = request.method == "HEAD"
    if looks_like_digest(target.reference):
        answer = await state.cache.manifest_by_digest(
            target.upstream.name, target.repo, parse_digest(target.reference), head)
    else:
        accepted = parse_accept(request.headers.getall("Accept", []))
        answer = await state.cache.manifest_by_tag(
            target.upstream.name, target.repo, validate_tag(target.reference), accepted, head)
    request["cache_result"] = answer.cache_result
    return _manifest_response(request, answer)


def _manifest_response(request: web.Request, answer: ManifestAnswer) -> web.Response:
    headers = {**API_VERSION, "Docker-Content-Digest": answer.digest, "ETag": f'"{answer.digest}"',
               "Content-Type": answer.media_type}
    if request.headers.get("If-None-Match", "").strip('"') == answer.digest:
        return web.Response(status=304, headers=headers)
    if answer.body is None:  # HEAD answered from upstream without fetching the body
        response = web.Response(headers=headers)
        response.headers["Content-Length"] = str(answer.size)
        return response
    return web.Response(body=answer.body, headers=headers)


async def blob(request: web.Request, state: AppState, target: Target) -> web.StreamResponse:
    request["route"] = "blob"
    digest = parse_digest(target.reference)
    head = request.method == "HEAD"
    found = await state.cache.blob(target.upstream.name, target.repo, digest, head)
    byte_range = parse_range(request.headers.get("Range"), found.size)
    headers = {**API_VERSION, "Docker-Content-Digest": str(digest), "Accept-Ranges": "bytes",
               "Content-Type": "application/octet-stream", "Cache-Control": "max-age=31536000"}
    if isinstance(found, LocalBlob):
        request["cache_result"] = "HIT"
        return BlobFileResponse(found.path, headers=headers)
    request["cache_result"] = found.cache_result
    return await _stream_blob(request, found, byte_range, headers)


class BlobFileResponse(web.FileResponse):
    """aiohttp's FileResponse (Range validated above, HEAD, conditionals, headers) with the
    body sent by `filesend` from a worker thread instead of aiohttp's 256 KiB executor reads
    (uvloop has no loop.sendfile); made safe to prepare twice: the middleware sends
    responses itself to log their real size."""

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return None
        return await super().prepare(request)

    async def _sendfile(self, request: web.BaseRequest, fobj: IO[Any], offset: int,
                        count: int) -> AbstractStreamWriter:
        # Overrides FileResponse's private hook (same signature since aiohttp 3.8), called
        # with the file open and the range decided, only when there is a body to send.
        writer = await web.StreamResponse.prepare(self, request)  # sends the headers
        assert writer is not None
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("connection lost")
        sender = filesend.open_sender(transport)
        if sender is None:
            return await self._sendfile_fallback(writer, fobj, offset, count)
        try:
            await sender.send_file(fobj.fileno(), offset, count)
        except ConnectionResetError:
            sender.close()
            transport.abort()  # part of the body is out: the connection is unusable
            raise
        finally:
            sender.close()
        await web.StreamResponse.write_eof(self)
        return writer


async def _stream_blob(request: web.Request, found: RemoteBlob, byte_range: tuple[int, int] | None,
                       headers: dict[str, str]) -> web.StreamResponse:
    start, end = byte_range or (0, found.size)
    response = web.StreamResponse(status=206 if byte_range else 200, headers=headers)
    response.headers["ETag"] = f'"{headers["Docker-Content-Digest"]}"'
    if byte_range:
        response.headers["Content-Range"] = content_range(start, end, found.size)
    response.content_length = end - start
    await response.prepare(request)
    if request.method == "HEAD" or found.fill is None:
        await response.write_eof()
        return response
    request["streaming"] = True
    transport = request.transport
    sender = filesend.open_sender(transport) if transport is not None else None
    try:
        # aclosing: a client that goes away (write raises) leaves the fill's subscriber list
        # at once, not when the generator is garbage collected; the fill itself goes on.
        async with aclosing(found.fill.stream(start, end, file_ranges=sender is not None)) as batches:
            async for batch in batches:
                if isinstance(batch, FileRange):
                    assert sender is not None
                    await sender.send_file(batch.fd, batch.offset, batch.length)
                elif sender is not None:
                    await sender.send_chunks(batch)
                else:
                    for chunk in batch:
                        await response.write(chunk)
    except (FillAborted, ConnectionResetError) as exc:
        # Never end a short or unverified blob cleanly: drop the connection instead (the
        # sender's socket duplicate first, or the socket would stay open).
        if sender is not None:
            sender.close()
        if request.transport is not None:
            request.transport.abort()
        if isinstance(exc, FillAborted):
            raise ConnectionResetError("upstream fill failed; connection dropped") from None
        raise
    finally:
        if sender is not None:
            sender.close()
    await response.write_eof()
    return response


async def tags_list(request: web.Request, state: AppState, target: Target) -> web.StreamResponse:
    """Proxied to upstream each time, with `n`/`last` pagination and a `Link` header."""
    request["route"] = "tags"
    params = {}
    if "n" in request.query:
        n = request.query["n"]
        if not n.isdigit():
            raise RegistryError("PAGINATION_NUMBER_INVALID", detail={"n": n[:20]})
        params["n"] = n
    if "last" in request.query:
        params["last"] = validate_tag(request.query["last"])
    query = f"?{urlencode(params)}" if params else ""
    client = state.clients[target.upstream.name]
    _, body, headers = await state.cache.call_upstream(
        client.get_json_api(target.repo, f"tags/list{query}", "tags"), "NAME_UNKNOWN")
    out = {**API_VERSION, "Content-Type": "application/json"}
    if "Link" in headers:
        out["Link"] = _keep_ns(headers["Link"], request.query.get("ns"))
    return web.Response(body=body, headers=out)


def _keep_ns(link: str, ns: str | None) -> str:
    """Upstream's next-page link, relative, with our `ns` kept so page 2 goes to the same upstream."""
    if not ns:
        return link
    url, sep, rest = link.partition(">")
    joiner = "&" if "?" in url else "?"
    return f"{url}{joiner}{urlencode({'ns': ns})}{sep}{rest}"


async def referrers(request: web.Request, state: AppState, target: Target) -> web.StreamResponse:
    """OCI 1.1 referrers, proxied uncached; upstream's 404 means 'unsupported' and passes on."""
    request["route"] = "referrers"
    digest = parse_digest(target.reference)
    query = f"?{urlencode({'artifactType': request.query['artifactType']})}" if "artifactType" in request.query else ""
    client = state.clients[target.upstream.name]
    _, body, headers = await state.cache.call_upstream(
        client.get_json_api(target.repo, f"referrers/{digest}{query}", "referrers", accept=OCI_INDEX),
        "NAME_UNKNOWN")
    out = {**API_VERSION, "Content-Type": headers.get("Content-Type", OCI_INDEX)}
    if "OCI-Filters-Applied" in headers:
        out["OCI-Filters-Applied"] = headers["OCI-Filters-Applied"]
    return web.Response(body=body, headers=out)


async def healthz(request: web.Request) -> web.Response:
    """The process is alive."""
    request["route"] = "other"
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the store is writable; upstream reachability does not matter (by design)."""
    request["route"] = "other"
    state = request.app[STATE]
    writable = await asyncio.to_thread(state.store.is_writable)
    return web.json_response({"status": "ok" if writable else "store not writable",
                              "store_writable": writable}, status=200 if writable else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format; state gauges (fills, store, disk) are refreshed first."""
    request["route"] = "other"
    state = request.app[STATE]
    if state.metrics is None:
        raise RegistryError("NAME_UNKNOWN", "metrics are disabled", status=404)
    await state.metrics.collect()
    body = await asyncio.to_thread(state.metrics.render)
    response = web.Response(body=body)
    response.headers["Content-Type"] = state.metrics.content_type
    return response


async def not_found(request: web.Request) -> web.Response:
    raise RegistryError("NAME_UNKNOWN", "unknown path", detail={"path": request.path[:300]})


def add_routes(app: web.Application, with_metrics: bool, registry_api: bool = True) -> None:
    if registry_api:
        app.router.add_route("*", "/v2", registry_api_handler)
        app.router.add_route("*", "/v2/{tail:.*}", registry_api_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if with_metrics:
        app.router.add_get("/metrics", metrics)
    app.router.add_route("*", "/{tail:.*}", not_found)


__all__ = ["AppState", "STATE", "add_routes"]
