"""The load run's images: deterministic, generated on demand, any number of them.

Image k is `load/img<k>:v1`: a config, one of a few large base layers shared by many images
(as real images share their base), and one to three layers of its own with log-uniform
sizes. Layer bytes are a unique header plus a slice of one shared random buffer, so the
upstream holds only that buffer and rebuilds a blob per request. Digests are computed when
an image is first asked for, so the catalogue has no size limit and no start-up cost.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass

MiB = 1024 * 1024
SHARED_BYTES = 40 * MiB
BASE_LAYER_SIZES = (6 * MiB, 12 * MiB, 20 * MiB, 28 * MiB)
UNIQUE_MIN, UNIQUE_MAX = 16 * 1024, 16 * MiB
SCHEMA2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"
_REPO_RE = re.compile(r"load/img(\d+)")


def image_repo(k: int) -> str:
    return f"load/img{k}"


@dataclass(frozen=True, slots=True)
class BlobSpec:
    header: bytes
    offset: int
    size: int


class Catalog:
    def __init__(self, seed: int = 1) -> None:
        self.seed = seed
        self.shared = random.Random(seed).randbytes(SHARED_BYTES)
        self.specs: dict[str, BlobSpec] = {}
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self._bases = [self._add_blob(f"base{i}", size, random.Random(seed * 1000 + i))
                       for i, size in enumerate(BASE_LAYER_SIZES)]

    def blob_bytes(self, digest: str) -> bytes:
        spec = self.specs[digest]
        return spec.header + self.shared[spec.offset: spec.offset + spec.size - len(spec.header)]

    def _add_blob(self, name: str, size: int, rng: random.Random, body: bytes | None = None) -> tuple[str, int]:
        if body is not None:
            spec = BlobSpec(body, 0, len(body))
        else:
            header = f"regcache load layer {name} seed {self.seed}\n".encode()
            size = max(size, len(header))
            offset = rng.randrange(0, SHARED_BYTES - size + len(header) + 1)
            spec = BlobSpec(header, offset, size)
        hasher = hashlib.sha256(spec.header)
        hasher.update(memoryview(self.shared)[spec.offset: spec.offset + spec.size - len(spec.header)])
        digest = "sha256:" + hasher.hexdigest()
        self.specs[digest] = spec
        return digest, spec.size

    def ensure_image(self, k: int) -> str:
        """Generate image k if needed; returns its manifest digest."""
        repo = image_repo(k)
        found = self.manifests.get((repo, "v1"))
        if found is not None:
            return "sha256:" + hashlib.sha256(found[0]).hexdigest()
        rng = random.Random(self.seed * 7919 + k)
        base = self._bases[rng.randrange(len(self._bases))]
        own = [self._add_blob(f"img{k}-{i}", _log_uniform(rng, UNIQUE_MIN, UNIQUE_MAX), rng)
               for i in range(rng.choice((1, 1, 2, 3)))]
        config_body = json.dumps({"architecture": "amd64", "os": "linux", "load_image": k,
                                  "rootfs": {"type": "layers"}}).encode()
        config = self._add_blob(f"img{k}-config", 0, rng, body=config_body)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": SCHEMA2,
            "config": {"mediaType": CONFIG_TYPE, "size": config[1], "digest": config[0]},
            "layers": [{"mediaType": LAYER_TYPE, "size": size, "digest": digest} for digest, size in [base, *own]],
        }).encode()
        digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        self.manifests[(repo, "v1")] = (manifest, SCHEMA2)
        self.manifests[(repo, digest)] = (manifest, SCHEMA2)
        return digest


def _log_uniform(rng: random.Random, low: int, high: int) -> int:
    return int(math.exp(rng.uniform(math.log(low), math.log(high))))


class CatalogBlobs(MutableMapping[str, bytes]):
    """FakeRegistry.blobs backed by the catalogue (read-only)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def __getitem__(self, digest: str) -> bytes:
        return self.catalog.blob_bytes(digest)

    def __contains__(self, digest: object) -> bool:
        return digest in self.catalog.specs

    def __iter__(self) -> Iterator[str]:
        return iter(self.catalog.specs)

    def __len__(self) -> int:
        return len(self.catalog.specs)

    def __setitem__(self, digest: str, data: bytes) -> None:
        raise TypeError("the load catalogue is generated, not added to")

    def __delitem__(self, digest: str) -> None:
        raise TypeError("the load catalogue is generated, not removed from")


class CatalogManifests(Mapping[tuple[str, str], tuple[bytes, str]]):
    """FakeRegistry.manifests backed by the catalogue: asking for a tag generates the image."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def __getitem__(self, key: tuple[str, str]) -> tuple[bytes, str]:
        repo, ref = key
        match = _REPO_RE.fullmatch(repo)
        if match and ref == "v1":
            self.catalog.ensure_image(int(match.group(1)))
        return self.catalog.manifests[key]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.catalog.manifests)

    def __len__(self) -> int:
        return len(self.catalog.manifests)
