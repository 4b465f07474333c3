"""Generate the bench data and push it into the upstream through the registry push API.

The big blob: a fresh 4 MiB of os.urandom, sliced at pseudo-random offsets into 1 MiB chunks.
Generating it costs memcpy time only (os.urandom runs at ~300 MB/s here, too slow for 1 GiB
per run), it is incompressible enough for a path that never compresses, and the random base
gives every run a new digest. It is streamed in one PATCH while hashed, then committed with
PUT ?digest= (distribution-spec "Pushing a blob in chunks"), so it never touches our disk.

The small image: a config blob, a 1 MiB layer, and a Docker schema 2 manifest referencing
them, tagged `latest`; the big blob is also pushed as the layer of a second image.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import urlsplit

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"
SMALL_REPO = "bench/small"
BIG_REPO = "bench/big"
TAG = "latest"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Seeded:
    """What the upstream holds after seeding."""

    blob_hex: str               # the big blob
    blob_size: int
    manifest_hex: str           # the small image's manifest
    manifest_type: str
    small_manifest_path: str    # /v2/bench/small/manifests/latest
    big_manifest_hex: str
    layer_hex: str              # the small image's layer (1 MiB)

    def blob_path(self, repo: str = BIG_REPO) -> str:
        return f"/v2/{repo}/blobs/sha256:{self.blob_hex}"

    def tags(self) -> dict[str, tuple[str, str]]:
        """Tag paths -> (manifest digest hex, media type), for the nginx front."""
        return {self.small_manifest_path: (self.manifest_hex, self.manifest_type),
                f"/v2/{BIG_REPO}/manifests/{TAG}": (self.big_manifest_hex, self.manifest_type)}


def blob_chunks(base: bytes, size: int) -> Iterator[bytes]:
    """size bytes: 1 MiB slices of `base` at offsets from a multiplicative sequence."""
    span = len(base) - CHUNK
    i, sent = 0, 0
    while sent < size:
        off = (i * 2654435761) % span
        n = min(CHUNK, size - sent)
        yield base[off:off + n]
        sent += n
        i += 1


def _relative(location: str) -> str:
    """Path and query of an upload Location (docker-registry answers with absolute URLs)."""
    parts = urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


class Pusher:
    """A minimal push client for one registry on 127.0.0.1 (no auth)."""

    def __init__(self, port: int) -> None:
        self.port = port

    def _request(self, method: str, path: str, body=None, headers: dict | None = None,
                 expect: tuple[int, ...] = (201, 202)) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300, blocksize=CHUNK)
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        if resp.status not in expect:
            raise RuntimeError(f"{method} {path}: {resp.status} {data[:300]!r}")
        return resp

    def _start_upload(self, repo: str) -> str:
        return _relative(self._request("POST", f"/v2/{repo}/blobs/uploads/").headers["Location"])

    def push_bytes(self, repo: str, data: bytes) -> str:
        """Monolithic upload (POST then PUT ?digest=); returns the hex digest."""
        hexd = hashlib.sha256(data).hexdigest()
        loc = self._start_upload(repo)
        sep = "&" if "?" in loc else "?"
        self._request("PUT", f"{loc}{sep}digest=sha256:{hexd}", body=data,
                      headers={"Content-Type": "application/octet-stream"})
        return hexd

    def push_stream(self, repo: str, chunks: Iterator[bytes], size: int) -> str:
        """Streamed upload: one PATCH with the whole body, hashed on the way; then PUT."""
        hasher = hashlib.sha256()

        def hashed() -> Iterator[bytes]:
            for c in chunks:
                hasher.update(c)
                yield c

        loc = self._start_upload(repo)
        resp = self._request("PATCH", loc, body=hashed(),
                             headers={"Content-Type": "application/octet-stream",
                                      "Content-Length": str(size)})
        loc = _relative(resp.headers["Location"])
        hexd = hasher.hexdigest()
        sep = "&" if "?" in loc else "?"
        self._request("PUT", f"{loc}{sep}digest=sha256:{hexd}", body=b"")
        return hexd

    def push_manifest(self, repo: str, tag: str, body: bytes, media_type: str) -> str:
        self._request("PUT", f"/v2/{repo}/manifests/{tag}", body=body,
                      headers={"Content-Type": media_type})
        return hashlib.sha256(body).hexdigest()


def _manifest(config_hex: str, config_size: int, layers: list[tuple[str, int]]) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "size": config_size, "digest": f"sha256:{config_hex}"},
        "layers": [{"mediaType": LAYER_TYPE, "size": s, "digest": f"sha256:{h}"} for h, s in layers],
    }
    return json.dumps(doc, indent=3).encode()


def _config(tag: str, layer_hexes: list[str]) -> bytes:
    return json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/true"], "Labels": {"regcache.bench": tag}},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{h}" for h in layer_hexes]},
    }).encode()


def seed(port: int, blob_size: int) -> Seeded:
    """Push the big blob and both images to the registry on 127.0.0.1:port."""
    p = Pusher(port)
    base = os.urandom(4 * CHUNK + 4096)
    blob_hex = p.push_stream(BIG_REPO, blob_chunks(base, blob_size), blob_size)

    layer = os.urandom(CHUNK)
    layer_hex = p.push_bytes(SMALL_REPO, layer)
    cfg = _config("small", [layer_hex])
    cfg_hex = p.push_bytes(SMALL_REPO, cfg)
    small = _manifest(cfg_hex, len(cfg), [(layer_hex, len(layer))])
    manifest_hex = p.push_manifest(SMALL_REPO, TAG, small, MANIFEST_TYPE)

    big_cfg = _config("big", [blob_hex])
    big_cfg_hex = p.push_bytes(BIG_REPO, big_cfg)
    big = _manifest(big_cfg_hex, len(big_cfg), [(blob_hex, blob_size)])
    big_hex = p.push_manifest(BIG_REPO, TAG, big, MANIFEST_TYPE)

    return Seeded(blob_hex=blob_hex, blob_size=blob_size, manifest_hex=manifest_hex,
                  manifest_type=MANIFEST_TYPE,
                  small_manifest_path=f"/v2/{SMALL_REPO}/manifests/{TAG}",
                  big_manifest_hex=big_hex, layer_hex=layer_hex)
