"""Helpers for the cache-lifecycle tests: put images straight into a store, age files,
list what is on disk. Content goes in through FsStore's own writers (same layout and
commit path as the server), so gc sees exactly what a running regcache leaves behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from regcache.mediatypes import DOCKER_MANIFEST, OCI_INDEX
from regcache.reference import parse_digest
from regcache.store import FsStore, TagRecord

DAY = 86400.0


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class StoredImage:
    repo: str
    tag: str | None
    manifest: str
    blobs: list[str]
    paths: list[Path]  # tag record (if any), manifest, blobs


def put_blob(store: FsStore, data: bytes) -> str:
    digest = sha256(data)
    writer = store.new_blob_writer(parse_digest(digest))
    writer.write(data)
    writer.commit(len(data))
    return digest


def manifest_body(config: str, config_size: int, layers: list[tuple[str, int]]) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "size": config_size, "digest": config},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": size, "digest": d} for d, size in layers],
    }).encode()


def put_manifest(store: FsStore, body: bytes, media_type: str = DOCKER_MANIFEST) -> str:
    digest = sha256(body)
    path = store.manifest_path(parse_digest(digest))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(media_type.encode() + b"\n" + body)
    return digest


def put_tag(store: FsStore, repo: str, tag: str, digest: str, upstream: str = "docker.io") -> Path:
    path = store.tag_path(upstream, repo, tag)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = TagRecord(digest, DOCKER_MANIFEST, 0, time.time())
    path.write_text(json.dumps({"digest": record.digest, "media_type": record.media_type,
                                "size": record.size, "validated_at": record.validated_at}))
    return path


def put_image(store: FsStore, repo: str, tag: str | None, layers: list[bytes]) -> StoredImage:
    """An image (config + layers) with a tag record, as a pull through regcache leaves it."""
    config = json.dumps({"repo": repo, "tag": tag, "os": "linux"}).encode()
    config_digest = put_blob(store, config)
    layer_digests = [put_blob(store, layer) for layer in layers]
    body = manifest_body(config_digest, len(config), [(d, len(l)) for d, l in zip(layer_digests, layers)])
    digest = put_manifest(store, body)
    blobs = [config_digest, *layer_digests]
    paths = [store.manifest_path(parse_digest(digest))] + [store.blob_path(parse_digest(b)) for b in blobs]
    if tag is not None:
        paths.insert(0, put_tag(store, repo, tag, digest))
    return StoredImage(repo, tag, digest, blobs, paths)


def put_index(store: FsStore, repo: str, tag: str, children: list[StoredImage]) -> StoredImage:
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": DOCKER_MANIFEST, "digest": c.manifest, "size": 1,
         "platform": {"os": "linux", "architecture": f"arch{i}"}} for i, c in enumerate(children)]}).encode()
    digest = put_manifest(store, body, OCI_INDEX)
    tag_path = put_tag(store, repo, tag, digest)
    return StoredImage(repo, tag, digest, [], [tag_path, store.manifest_path(parse_digest(digest))])


def age(paths: list[Path], seconds_ago: float, now: float | None = None) -> None:
    """Set last access (mtime) of these files to `seconds_ago` before `now`."""
    when = (time.time() if now is None else now) - seconds_ago
    for path in paths:
        os.utime(path, (when, when))


def age_all(store: FsStore, seconds_ago: float) -> None:
    age([p for p in stored_files(store)], seconds_ago)


def stored_files(store: FsStore) -> dict[Path, int]:
    """Every blob, manifest and tag record on disk -> size."""
    out: dict[Path, int] = {}
    for top in ("blobs", "manifests", "tags"):
        for dirpath, _, files in os.walk(store.root / top):
            for name in files:
                path = Path(dirpath) / name
                out[path] = path.stat().st_size
    return out


def content_bytes(store: FsStore) -> int:
    """Blob + manifest bytes on disk (what gc calls content)."""
    return sum(size for path, size in stored_files(store).items() if "/tags/" not in str(path))


def blob_exists(store: FsStore, digest: str) -> bool:
    return store.blob_path(parse_digest(digest)).exists()


def manifest_exists(store: FsStore, digest: str) -> bool:
    return store.manifest_path(parse_digest(digest)).exists()
