"""The client for one upstream registry: auth, redirects, timeouts, error mapping.

It returns bytes, descriptors and open streams, and raises only `UpstreamError`s; it knows
nothing of how regcache serves them. Rules it keeps (wire-protocol.md 5, style.md C4):
- `Accept-Encoding: identity` and no transparent decompression: the bytes hashed are the
  bytes upstream stored.
- Redirects are followed by hand, at most 5, re-sending only `Range` and `Accept`: no
  `Authorization` ever reaches a CDN host, and redirect targets are never cached.
- Credentials go only to the registry host (Basic) and to an allowed token realm.
- One retry after a 401 with a fresh token; `insufficient_scope` is not retried.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Mapping
from urllib.parse import urlencode, urljoin, urlsplit

import aiohttp

from regcache import __version__
from regcache.config import UpstreamConfig
from regcache.errors import (
    DigestMismatch,
    UpstreamAuthError,
    UpstreamError,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from regcache.mediatypes import UPSTREAM_ACCEPT
from regcache.upstream.auth import Challenge, Token, TokenCache, parse_challenge, realm_allowed

log = logging.getLogger("regcache.upstream")

MAX_MANIFEST_BYTES = 8 * 1024 * 1024
MAX_TOKEN_BYTES = 1024 * 1024
MAX_REDIRECTS = 5
USER_AGENT = f"regcache/{__version__}"

# Called after every upstream response: (upstream, method, status or None, seconds, kind,
# response headers or None); metrics read the rate-limit headers from them.
Observer = Callable[[str, str, int | None, float, str, Mapping[str, str] | None], None]
# Called for body bytes received: (upstream, kind "manifest" or "blob", byte count).
BytesObserver = Callable[[str, str, int], None]


@dataclass(frozen=True, slots=True)
class ManifestHead:
    digest: str | None
    media_type: str
    size: int | None
    ratelimit_remaining: str | None = None


@dataclass(frozen=True, slots=True)
class FetchedManifest:
    body: bytes
    media_type: str
    digest: str  # computed from the bytes, never taken from a header


@dataclass(slots=True)
class BlobStream:
    """An open upstream blob body. `size` is the whole blob's size when known."""

    status: int
    size: int | None
    offset: int
    response: aiohttp.ClientResponse
    on_bytes: Callable[[int], None] = lambda size: None

    async def chunks(self, chunk_size: int) -> AsyncIterator[bytes]:
        try:
            while True:
                data = await self.response.content.read(chunk_size)
                if not data:
                    return
                self.on_bytes(len(data))
                yield data
        except asyncio.TimeoutError as exc:
            raise UpstreamTimeout("upstream stalled mid-body") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(f"upstream connection lost mid-body: {exc}") from exc


class UpstreamClient:
    """Requests to one configured upstream registry."""

    def __init__(self, session: aiohttp.ClientSession, config: UpstreamConfig,
                 observe: Observer | None = None, observe_bytes: BytesObserver | None = None) -> None:
        self.session = session
        self.config = config
        self.tokens = TokenCache()
        self._challenge: Challenge | None = None
        self._observe = observe or (lambda *args: None)
        self._observe_bytes = observe_bytes or (lambda *args: None)
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=config.connect_timeout, sock_connect=config.connect_timeout,
            sock_read=config.read_timeout)

    @property
    def name(self) -> str:
        return self.config.name

    # -- the registry API ---------------------------------------------------------------
    async def head_manifest(self, repo: str, reference: str) -> ManifestHead:
        """HEAD a manifest: free on Docker Hub, where GETs count against the pull limit."""
        async with self._request("HEAD", repo, f"manifests/{reference}", "manifest",
                                 {"Accept": UPSTREAM_ACCEPT}) as resp:
            length = resp.headers.get("Content-Length")
            return ManifestHead(
                digest=resp.headers.get("Docker-Content-Digest"),
                media_type=_media_type(resp),
                size=int(length) if length and length.isdigit() else None,
                ratelimit_remaining=resp.headers.get("ratelimit-remaining"),
            )

    async def get_manifest(self, repo: str, reference: str, accept: str = UPSTREAM_ACCEPT,
                           expected_digest: str | None = None) -> FetchedManifest:
        """GET a manifest and verify its bytes against the digest asked for (or announced)."""
        async with self._request("GET", repo, f"manifests/{reference}", "manifest",
                                 {"Accept": accept}) as resp:
            body = await _read_capped(resp, MAX_MANIFEST_BYTES)
            self._observe_bytes(self.name, "manifest", len(body))
            announced = resp.headers.get("Docker-Content-Digest")
            media_type = _media_type(resp)
        algorithm = (expected_digest or announced or "sha256:").split(":", 1)[0]
        if algorithm not in ("sha256", "sha512"):
            raise DigestMismatch(f"unsupported digest algorithm {algorithm}")
        digest = f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"
        for claimed in (expected_digest, announced):
            if claimed and claimed.split(":", 1)[0] == algorithm and claimed != digest:
                raise DigestMismatch(f"manifest bytes hash to {digest}, expected {claimed}")
        return FetchedManifest(body, media_type, digest)

    async def head_blob(self, repo: str, digest: str) -> int | None:
        """Size of a blob if upstream says it exists; a redirect means it exists, size unknown."""
        async with self._request("HEAD", repo, f"blobs/{digest}", "blob", {},
                                 follow_redirects=False) as resp:
            if 300 <= resp.status < 400:
                return None
            length = resp.headers.get("Content-Length")
            return int(length) if length and length.isdigit() else None

    @asynccontextmanager
    async def open_blob(self, repo: str, digest: str, offset: int = 0) -> AsyncIterator[BlobStream]:
        """GET a blob body (from `offset`), following the CDN redirect without credentials."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        async with self._request("GET", repo, f"blobs/{digest}", "blob", headers) as resp:
            yield BlobStream(resp.status, _total_size(resp, offset), offset if resp.status == 206 else 0, resp,
                             lambda size: self._observe_bytes(self.name, "blob", size))

    async def get_json_api(self, repo: str, path_and_query: str, kind: str,
                           accept: str = "application/json") -> tuple[int, bytes, dict[str, str]]:
        """A small JSON API call (tags/list, referrers); returns status, body, headers."""
        async with self._request("GET", repo, path_and_query, kind, {"Accept": accept}) as resp:
            body = await _read_capped(resp, MAX_MANIFEST_BYTES)
            keep = ("Content-Type", "Link", "OCI-Filters-Applied")
            return resp.status, body, {h: resp.headers[h] for h in keep if h in resp.headers}

    # -- plumbing -----------------------------------------------------------------------
    @asynccontextmanager
    async def _request(self, method: str, repo: str, path: str, kind: str,
                       headers: dict[str, str], *,
                       follow_redirects: bool = True) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send a registry request with auth; raise mapped errors; yield a 2xx response."""
        url = f"{self.config.url}/v2/{repo}/{path}"
        scope = f"repository:{repo}:pull"
        sent_auth = await self._auth_header(scope)
        resp = await self._send(method, url, kind, headers, sent_auth)
        try:
            if resp.status == 401:
                www = resp.headers.get("WWW-Authenticate", "")
                challenge = parse_challenge(www)
                # With a token already sent, insufficient_scope means "no such repository, or
                # private": retrying cannot help (Docker Hub never says 404 for these).
                if challenge is not None and not (sent_auth and "insufficient_scope" in www):
                    resp.release()
                    self._challenge = challenge
                    if sent_auth and sent_auth.startswith("Bearer "):
                        self.tokens.invalidate(scope, rejected=sent_auth.removeprefix("Bearer "))
                    resp = await self._send(method, url, kind, headers, await self._auth_header(scope))
            redirects = 0
            while follow_redirects and resp.status in (301, 302, 303, 307, 308):
                location = resp.headers.get("Location")
                resp.release()
                redirects += 1
                if not location or redirects > MAX_REDIRECTS:
                    raise UpstreamUnavailable("upstream redirect without a target or too many redirects")
                # Only Accept and Range follow a redirect (distribution client, OCI spec):
                # never Authorization, which presigned CDN URLs reject.
                carried = {k: v for k, v in headers.items() if k in ("Accept", "Range")}
                resp = await self._send(method, urljoin(str(resp.url), location), kind, carried, None)
            _raise_for_status(resp)
            yield resp
        finally:
            resp.release()

    async def _send(self, method: str, url: str, kind: str, headers: dict[str, str],
                    auth: str | None) -> aiohttp.ClientResponse:
        all_headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers}
        if auth:
            all_headers["Authorization"] = auth
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            resp = await self.session.request(
                method, url, headers=all_headers, allow_redirects=False,
                auto_decompress=False, timeout=self._timeout)
        except asyncio.TimeoutError as exc:
            self._observe(self.name, method, None, loop.time() - started, kind, None)
            log.debug("%s: %s %s timed out", self.name, method, _loggable(url))
            raise UpstreamTimeout(f"{method} {kind}: upstream timed out") from exc
        except aiohttp.ClientError as exc:
            self._observe(self.name, method, None, loop.time() - started, kind, None)
            log.debug("%s: %s %s failed: %s", self.name, method, _loggable(url), type(exc).__name__)
            raise UpstreamUnavailable(f"{method} {kind}: {type(exc).__name__}") from exc
        seconds = loop.time() - started
        self._observe(self.name, method, resp.status, seconds, kind, resp.headers)
        log.debug("%s: %s %s (auth %s) -> %d in %.3fs", self.name, method, _loggable(url),
                  auth.split(" ", 1)[0].lower() if auth else "none", resp.status, seconds)
        return resp

    async def _auth_header(self, scope: str) -> str | None:
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return self._basic() if self.config.username else None
        token = await self.tokens.get(scope, lambda s: self._fetch_token(challenge, s))
        return f"Bearer {token}"

    def _basic(self) -> str:
        raw = f"{self.config.username}:{self.config.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    async def _fetch_token(self, challenge: Challenge, scope: str) -> Token:
        params = {"scope": scope}
        if challenge.service:
            params["service"] = challenge.service
        separator = "&" if "?" in challenge.realm else "?"
        url = f"{challenge.realm}{separator}{urlencode(params)}"
        with_credentials = bool(self.config.username) and realm_allowed(self.config.url, challenge.realm)
        auth = self._basic() if with_credentials else None
        resp = await self._send("GET", url, "token", {"Accept": "application/json"}, auth)
        try:
            if resp.status in (401, 403):
                raise UpstreamAuthError(f"token server refused ({resp.status})")
            if resp.status == 429:
                raise UpstreamRateLimited("token server rate limit", resp.headers.get("Retry-After"))
            if resp.status != 200:
                raise UpstreamUnavailable(f"token server answered {resp.status}")
            body = await _read_capped(resp, MAX_TOKEN_BYTES)
        finally:
            resp.release()
        try:
            doc = json.loads(body)
            value = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            value = None
        if not isinstance(value, str) or not value:
            raise UpstreamUnavailable("token server answered without a token")
        return Token(value, self.tokens.lifetime_to_expiry(doc.get("expires_in")))


def _loggable(url: str) -> str:
    """A URL for a debug line: no user info and no query string (a CDN's presigned query
    is a credential; a token realm's query names only scope and service, but still)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}"


def _media_type(resp: aiohttp.ClientResponse) -> str:
    return resp.headers.get("Content-Type", "").split(";", 1)[0].strip()


def _total_size(resp: aiohttp.ClientResponse, offset: int) -> int | None:
    if resp.status == 206:
        total = resp.headers.get("Content-Range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = resp.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    try:
        body = await resp.content.read(limit + 1)
        while len(body) <= limit:
            more = await resp.content.read(limit + 1 - len(body))
            if not more:
                break
            body += more
    except asyncio.TimeoutError as exc:
        raise UpstreamTimeout("upstream stalled mid-body") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamUnavailable(f"upstream connection lost mid-body: {exc}") from exc
    if len(body) > limit:
        raise UpstreamUnavailable(f"upstream answer larger than {limit} bytes")
    length = resp.headers.get("Content-Length")
    if length and length.isdigit() and int(length) != len(body):
        raise UpstreamUnavailable("upstream answer shorter than its Content-Length")
    return body


def _raise_for_status(resp: aiohttp.ClientResponse) -> None:
    status = resp.status
    if status < 300 or (300 <= status < 400 and resp.method == "HEAD"):
        return
    if status == 404:
        raise UpstreamNotFound("not found upstream")
    if status == 401 and "insufficient_scope" in resp.headers.get("WWW-Authenticate", ""):
        raise UpstreamNotFound("upstream: repository not found or not accessible")
    if status in (401, 403):
        raise UpstreamAuthError(f"upstream answered {status}")
    if status == 429:
        raise UpstreamRateLimited("upstream rate limit", resp.headers.get("Retry-After"))
    if status == 416:
        raise UpstreamUnavailable("upstream refused the range")
    raise UpstreamUnavailable(f"upstream answered {status}")


__all__ = ["UpstreamClient", "UpstreamError", "ManifestHead", "FetchedManifest", "BlobStream"]
