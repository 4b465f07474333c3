"""Push images to the real upstream through the registry HTTP API.

Blocking (http.client): it runs in fixture setup, outside any event loop; async
tests call it through `asyncio.to_thread` (see RealUpstream.apush). Uploads are
monolithic (POST, then PUT ?digest=), children of an index go first (distribution
checks that every blob and child manifest exists when a manifest is put).
"""

from __future__ import annotations

import http.client
import urllib.parse
from collections.abc import Callable

from .images import Image, Index
from .net import LOOPBACK


class PushError(RuntimeError):
    pass


class Pusher:
    """Pushes to 127.0.0.1:port; `token_for(repo)` returns a bearer token with
    pull+push on repo, or None for a registry without auth."""

    def __init__(self, port: int, token_for: Callable[[str], str | None]) -> None:
        self.port = port
        self._token_for = token_for

    def push(self, repo: str, tag: str, image: Image | Index) -> str:
        """Push every blob and manifest of `image` and tag it; returns its digest."""
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=60)
        try:
            headers = {}
            token = self._token_for(repo)
            if token:
                headers["Authorization"] = f"Bearer {token}"
            for digest, data in image.blobs.items():
                self._push_blob(conn, headers, repo, digest, data)
            if isinstance(image, Index):
                for child in image.images:
                    self._put_manifest(conn, headers, repo, child.digest, child)
            self._put_manifest(conn, headers, repo, tag, image)
        finally:
            conn.close()
        return image.digest

    def delete_manifest(self, repo: str, digest: str) -> None:
        """DELETE a manifest by digest (distribution 2.8 cannot delete a bare tag; deleting
        the manifest removes every tag that points at it)."""
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=60)
        try:
            token = self._token_for(repo)
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            status, _, body = self._request(conn, "DELETE", f"/v2/{repo}/manifests/{digest}",
                                            headers)
        finally:
            conn.close()
        if status != 202:
            raise PushError(f"delete {repo}@{digest}: {status} {body[:300]!r}")

    def _request(self, conn: http.client.HTTPConnection, method: str, url: str,
                 headers: dict[str, str], body: bytes | None = None
                 ) -> tuple[int, http.client.HTTPMessage, bytes]:
        conn.request(method, url, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, resp.headers, data

    def _push_blob(self, conn, headers, repo: str, digest: str, data: bytes) -> None:
        # With the redirect middleware a HEAD on an existing blob answers 307.
        status, _, _ = self._request(conn, "HEAD", f"/v2/{repo}/blobs/{digest}", headers)
        if status in (200, 307):
            return
        status, resp_headers, body = self._request(
            conn, "POST", f"/v2/{repo}/blobs/uploads/", headers, b"")
        if status != 202:
            raise PushError(f"start upload {repo}: {status} {body[:300]!r}")
        location = urllib.parse.urlsplit(resp_headers["Location"])
        query = urllib.parse.parse_qsl(location.query)
        query.append(("digest", digest))
        url = f"{location.path}?{urllib.parse.urlencode(query)}"
        status, _, body = self._request(
            conn, "PUT", url, {**headers, "Content-Type": "application/octet-stream"}, data)
        if status != 201:
            raise PushError(f"put blob {repo}@{digest}: {status} {body[:300]!r}")

    def _put_manifest(self, conn, headers, repo: str, ref: str, image: Image | Index) -> None:
        status, _, body = self._request(conn, "PUT", f"/v2/{repo}/manifests/{ref}",
                                        {**headers, "Content-Type": image.media_type},
                                        image.manifest)
        if status != 201:
            raise PushError(f"put manifest {repo}:{ref}: {status} {body[:300]!r}")
