"""A recording reverse proxy to put between a real client and a mirror.

Real clients differ on the wire (containerd adds `?ns=`, the legacy Docker
engine pings `/v2/` and sends one `Accept` line per media type, ...). The
proxy forwards every request verbatim to `target` and records what the
client sent, so tests can assert on it. It never follows redirects and never
decodes bodies: the client sees the target's answers unchanged (status,
headers, bytes), only hop-by-hop headers are dropped.

Usage:
    async with RecordingProxy("http://127.0.0.1:5000") as rec:
        await skopeo.inspect_raw(f"docker://{rec.host}/library/x:1")
        assert rec.requests[0].accept == (...)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Self

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, MultiDict

# RFC 9110 §7.6.1 connection-specific headers, plus the ones aiohttp sets
# itself on the outgoing side.
_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
    "TE", "Trailer", "Transfer-Encoding", "Upgrade", "Host",
))


@dataclass(frozen=True)
class Recorded:
    """One request as the client sent it, and the status it got back."""

    method: str
    path: str                    # without query
    query: MultiDict[str]        # decoded query parameters
    raw_query: str
    accept: tuple[str, ...]      # every Accept header line, in order
    headers: CIMultiDict[str]    # all request headers
    status: int
    at: float                    # time.monotonic() when received

    @property
    def user_agent(self) -> str:
        return self.headers.get("User-Agent", "")

    @property
    def accept_types(self) -> tuple[str, ...]:
        """Accept split into media types (lines and commas), params dropped."""
        out = []
        for line in self.accept:
            for part in line.split(","):
                mt = part.split(";", 1)[0].strip()
                if mt:
                    out.append(mt)
        return tuple(out)

    def __str__(self) -> str:
        q = f"?{self.raw_query}" if self.raw_query else ""
        return f"{self.method} {self.path}{q} -> {self.status} accept={list(self.accept)}"


class RecordingProxy:
    """Async context manager: a proxy on 127.0.0.1:<free port> in front of
    `target` (e.g. "http://127.0.0.1:5000")."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.requests: list[Recorded] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def host(self) -> str:
        """host:port, the form registries.conf / --insecure-registry want."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def clear(self) -> None:
        self.requests.clear()

    def paths(self, method: str | None = None) -> list[str]:
        return [r.path for r in self.requests if method in (None, r.method)]

    async def __aenter__(self) -> Self:
        # auto_decompress=False: pass bytes through exactly as the target sent them.
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
        app = web.Application(client_max_size=1 << 34)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        at = time.monotonic()
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in _HOP
        )
        body = await request.read() if request.body_exists else None
        status = 502
        try:
            async with self._session.request(
                request.method, self.target + request.raw_path,
                headers=headers, data=body, allow_redirects=False,
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
            ) as upstream:
                status = upstream.status
                resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for k, v in upstream.headers.items():
                    if k.lower() not in _HOP:
                        resp.headers.add(k, v)
                await resp.prepare(request)
                if request.method != "HEAD":
                    async for chunk in upstream.content.iter_chunked(1 << 16):
                        await resp.write(chunk)
                await resp.write_eof()
                return resp
        except (TimeoutError, aiohttp.ClientError) as e:
            return web.Response(status=502, text=f"recording proxy: {e!r}\n")
        finally:
            self.requests.append(Recorded(
                method=request.method, path=request.path,
                query=MultiDict(request.query), raw_query=request.query_string,
                accept=tuple(request.headers.getall("Accept", ())),
                headers=CIMultiDict(request.headers), status=status, at=at,
            ))
