"""An in-process upstream registry (aiohttp) for faults a real registry cannot produce.

Holds blobs and manifests in dicts, records every request, and has knobs per blob digest
or manifest reference: a status to answer (429 with Retry-After, 5xx), a truncated,
corrupt or over-long body, slow chunks, a stall, a dropped connection, a redirect to a
second "CDN" app. Optional Bearer auth with its own token endpoint.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field

from aiohttp import web


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Fault:
    status: int | None = None          # answer this status instead
    retry_after: str | None = None
    truncate_at: int | None = None     # send only this many bytes, then drop the connection
    corrupt: bool = False              # flip a byte in the middle
    extra_bytes: int = 0               # append this many bytes beyond the blob
    chunk_delay: float = 0.0           # sleep between chunks
    stall_after: int | None = None     # after this many bytes, stop sending until the peer leaves
    delay: float = 0.0                 # sleep before answering (holds requests in flight)
    challenge_delay: float = 0.0       # manifests: sleep before answering 401 to an unauthorized request
    times: int | None = None           # apply to this many requests, then behave (None = always)

    def use(self) -> bool:
        if self.times is None:
            return True
        if self.times <= 0:
            return False
        self.times -= 1
        return True


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    started: float = 0.0               # time.monotonic() when the request arrived
    finished: float | None = None      # when a blob body was sent, cut or abandoned
    outcome: str = ""                  # blob bodies: complete, truncated, stalled, peer-gone


@dataclass
class FakeRegistry:
    blobs: MutableMapping[str, bytes] = field(default_factory=dict)
    manifests: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)
    faults: dict[str, Fault] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    require_auth: bool = False
    token_requests: int = 0
    token_fault: Fault | None = None
    token_body: bytes | None = None     # answer this instead of a token (garbage)
    redirect_base: str | None = None    # blob GETs answer 307 to <redirect_base>/cdn/<digest>
    token_realm: str | None = None      # realm announced in challenges (default: our /token)
    token_value: str = "good-token"     # the token issued, and the only one accepted
    chunk_size: int = 64 * 1024
    base_url: str = ""
    server: object | None = None        # the aiohttp TestServer while serving (see serve/stop)

    # -- content ------------------------------------------------------------------------
    def add_blob(self, data: bytes) -> str:
        digest = sha256(data)
        self.blobs[digest] = data
        return digest

    def add_manifest(self, repo: str, tag: str | None, body: bytes, media_type: str) -> str:
        digest = sha256(body)
        self.manifests[(repo, digest)] = (body, media_type)
        if tag:
            self.manifests[(repo, tag)] = (body, media_type)
        return digest

    def add_image(self, repo: str, tag: str, layers: list[bytes]) -> dict[str, object]:
        """A schema2 image with these layer bytes; returns its digests."""
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
        config_digest = self.add_blob(config)
        layer_digests = [self.add_blob(layer) for layer in layers]
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                       "size": len(config), "digest": config_digest},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                        "size": len(layer), "digest": d} for layer, d in zip(layers, layer_digests)],
        }).encode()
        digest = self.add_manifest(repo, tag, manifest, "application/vnd.docker.distribution.manifest.v2+json")
        return {"manifest": digest, "config": config_digest, "layers": layer_digests}

    # -- counting -----------------------------------------------------------------------
    def count(self, method: str | None = None, contains: str = "") -> int:
        return sum(1 for r in self.requests
                   if (method is None or r.method == method) and contains in r.path)

    def matching(self, method: str | None = None, contains: str = "") -> list[Recorded]:
        return [r for r in self.requests
                if (method is None or r.method == method) and contains in r.path]

    # -- serving ------------------------------------------------------------------------
    async def serve(self, port: int = 0) -> str:
        """Listen on 127.0.0.1 (`port` 0: any free one); returns and remembers the base URL."""
        from aiohttp.test_utils import TestServer

        server = TestServer(self.app(), host="127.0.0.1", port=port or None)
        await server.start_server()
        self.server = server
        self.base_url = str(server.make_url("")).rstrip("/")
        return self.base_url

    async def stop(self) -> None:
        """Stop listening: connections to `base_url` are refused until `serve(port)` again."""
        if self.server is not None:
            server, self.server = self.server, None
            await server.close()  # type: ignore[attr-defined]

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    # -- the app ------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/token", self._token)
        app.router.add_route("*", "/v2/", self._base)
        app.router.add_route("*", "/v2/{name:.+}/manifests/{ref}", self._manifest)
        app.router.add_route("*", "/v2/{name:.+}/blobs/{digest}", self._blob)
        app.router.add_route("*", "/v2/{name:.+}/tags/list", self._tags)
        app.router.add_route("*", "/cdn/{digest}", self._cdn)
        return app

    def _record(self, request: web.Request) -> Recorded:
        entry = Recorded(request.method, request.path, request.query_string, dict(request.headers),
                         started=time.monotonic())
        self.requests.append(entry)
        request["recorded"] = entry
        return entry

    def _challenge(self, request: web.Request, repo: str) -> web.Response | None:
        if not self.require_auth or request.headers.get("Authorization") == f"Bearer {self.token_value}":
            return None
        realm = self.token_realm or f"{self.base_url}/token"
        return web.json_response(
            {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}, status=401,
            headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="fake",scope="repository:{repo}:pull"'})

    async def _token(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        self.token_requests += 1
        fault = self.token_fault if self.token_fault and self.token_fault.use() else None
        if fault and fault.delay:
            await asyncio.sleep(fault.delay)
        if fault and fault.status:
            return web.Response(status=fault.status)
        if self.token_body is not None:
            return web.Response(body=self.token_body, content_type="application/json")
        return web.json_response({"token": self.token_value, "expires_in": 300})

    async def _base(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        return self._challenge(request, "") or web.json_response({})

    async def _tags(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        repo = request.match_info["name"]
        tags = sorted(ref for (r, ref) in self.manifests if r == repo and ":" not in ref)
        if not tags:
            return web.json_response({"errors": [{"code": "NAME_UNKNOWN", "message": "x"}]}, status=404)
        # Pagination as distribution v3: `last` exclusive, `n` per page, a relative Link.
        if "last" in request.query:
            tags = [t for t in tags if t > request.query["last"]]
        headers = {}
        if "n" in request.query and len(tags) > int(request.query["n"]):
            n = int(request.query["n"])
            tags = tags[:n]
            headers["Link"] = f'</v2/{repo}/tags/list?last={tags[-1]}&n={n}>; rel="next"'
        return web.json_response({"name": repo, "tags": tags}, headers=headers)

    async def _apply_fault(self, key: str) -> tuple[Fault | None, web.Response | None]:
        """The fault set for `key` (digest or manifest reference) if it applies to this request,
        after its delay; with the error to answer instead when the fault is a status."""
        fault = self.faults.get(key)
        if fault is None or not fault.use():
            return None, None
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.status:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            return fault, web.json_response({"errors": [{"code": "UNKNOWN", "message": "fault"}]},
                                            status=fault.status, headers=headers)
        return fault, None

    async def _manifest(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        repo, ref = request.match_info["name"], request.match_info["ref"]
        denied = self._challenge(request, repo)
        if denied:
            fault = self.faults.get(ref)
            if fault and fault.challenge_delay and fault.use():
                await asyncio.sleep(fault.challenge_delay)
            return denied
        _, error = await self._apply_fault(ref)
        if error is not None:
            return error
        found = self.manifests.get((repo, ref))
        if found is None:
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "x"}]}, status=404)
        body, media_type = found
        headers = {"Docker-Content-Digest": sha256(body), "Content-Type": media_type}
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(body))
            return web.Response(headers=headers)
        return web.Response(body=body, headers=headers)

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        repo, digest = request.match_info["name"], request.match_info["digest"]
        denied = self._challenge(request, repo)
        if denied:
            return denied
        if digest not in self.blobs:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN", "message": "x"}]}, status=404)
        if self.redirect_base and request.method == "GET":
            return web.Response(status=307, headers={"Location": f"{self.redirect_base}/cdn/{digest}"})
        return await self._send_blob(request, digest)

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        if "Authorization" in request.headers:
            return web.Response(status=400, text="Only one auth mechanism allowed")
        digest = request.match_info["digest"]
        if digest not in self.blobs:
            return web.Response(status=404)
        return await self._send_blob(request, digest)

    async def _send_blob(self, request: web.Request, digest: str) -> web.StreamResponse:
        data = self.blobs[digest]
        fault, error = await self._apply_fault(digest)
        if error is not None:
            return error
        start = 0
        rng = request.headers.get("Range")
        if rng and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[6:-1])
        body = data
        if fault and fault.corrupt:
            middle = len(body) // 2
            body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1:]
        if fault and fault.extra_bytes:
            body = body + b"x" * fault.extra_bytes
        response = web.StreamResponse(status=206 if start else 200)
        # The announced size is the real one, except when the fault is an over-long body.
        response.content_length = len(body) - start
        if start:
            response.headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        response.headers["Docker-Content-Digest"] = digest
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        entry: Recorded = request["recorded"]
        try:
            entry.outcome = await self._write_body(request, response, body, start, fault)
        except asyncio.CancelledError:
            entry.outcome = "peer-gone"  # aiohttp cancels a handler whose client disconnected
            raise
        finally:
            entry.finished = time.monotonic()
        return response

    async def _write_body(self, request: web.Request, response: web.StreamResponse, body: bytes,
                          start: int, fault: Fault | None) -> str:
        sent = 0
        try:
            for offset in range(start, len(body), self.chunk_size):
                chunk = body[offset:offset + self.chunk_size]
                if fault and fault.stall_after is not None and sent >= fault.stall_after:
                    # Hold the connection open, sending nothing, until the client gives up.
                    while request.transport is not None and not request.transport.is_closing():
                        await asyncio.sleep(0.05)
                    return "stalled"
                if fault and fault.truncate_at is not None and sent + len(chunk) > fault.truncate_at:
                    await response.write(chunk[: fault.truncate_at - sent])
                    assert request.transport is not None
                    request.transport.close()
                    return "truncated"
                await response.write(chunk)
                sent += len(chunk)
                if fault and fault.chunk_delay and offset + self.chunk_size < len(body):
                    await asyncio.sleep(fault.chunk_delay)
        except ConnectionError:
            return "peer-gone"
        return "complete"
