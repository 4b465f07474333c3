"""The blob CDN that the real upstream redirects to, like Docker Hub's Cloudflare/R2
or ghcr's pkg-containers host.

distribution 2.8's `redirect` storage middleware answers blob GET and HEAD with
307 to `<scheme>://<host><storage path>`: it keeps only scheme and host of its
`baseurl` (a path in baseurl is ignored in 2.8) and appends the storage driver's
path, e.g. `/docker/registry/v2/blobs/sha256/ab/abcd.../data`. With the filesystem
driver that path lives under `rootdirectory`, so serving the storage root here
serves exactly the registry's bytes.

Like a presigned S3/R2 URL, a request that carries an `Authorization` header is
refused with 400 (a client must not forward upstream credentials across hosts).
Every request is counted.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from .threadserver import ThreadedServer

_TWO_AUTH = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InvalidArgument</Code>'
    "<Message>Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
    "Signature query string parameter or the Authorization header should be specified"
    "</Message></Error>"
)


@dataclass(frozen=True)
class CdnRequest:
    method: str
    path: str
    status: int
    authorization: bool        # the request carried an Authorization header
    range: str | None          # its Range header, if any


class CdnServer:
    """Serves files under `root` (the registry's storage root) at their relative path."""

    def __init__(self, root: Path, port: int = 0) -> None:
        self.root = root.resolve()
        self._lock = threading.Lock()
        self._requests: list[CdnRequest] = []
        self._server = ThreadedServer(self._make_app, "cdn", port)

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()

    @property
    def running(self) -> bool:
        return self._server.running

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def requests(self) -> list[CdnRequest]:
        with self._lock:
            return list(self._requests)

    def count(self, method: str | None = None, path_contains: str = "") -> int:
        return sum(1 for r in self.requests
                   if (method is None or r.method == method) and path_contains in r.path)

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()

    def _make_app(self) -> web.Application:
        app = web.Application()
        # add_get also registers HEAD, which the registry redirects as well.
        app.router.add_get("/{path:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        has_auth = "Authorization" in request.headers

        def record(status: int) -> None:
            with self._lock:
                self._requests.append(CdnRequest(request.method, request.path, status,
                                                 has_auth, request.headers.get("Range")))

        if has_auth:
            record(400)
            return web.Response(status=400, text=_TWO_AUTH, content_type="application/xml")
        target = (self.root / request.match_info["path"]).resolve()
        # Only blob data files, and nothing outside the storage root.
        if (not target.is_relative_to(self.root) or target.name != "data"
                or "/blobs/" not in target.as_posix() or not target.is_file()):
            record(404)
            return web.Response(status=404, text="<Error><Code>NoSuchKey</Code></Error>",
                                content_type="application/xml")
        # Recorded before the body goes out, so a client that has its bytes always
        # finds the request counted. FileResponse itself answers Range with 206.
        record(206 if "Range" in request.headers else 200)
        return web.FileResponse(target, headers={"Content-Type": "application/octet-stream"})
