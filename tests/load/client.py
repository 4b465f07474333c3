"""The load clients: workers pulling images through regcache the way container clients do.

A pull: `GET /v2/`, `HEAD` the tag (containerd resolves with HEAD), `GET` the manifest by
digest, then the config and layers, three at a time. Every manifest and blob is checked
against its digest and size; a blob that does not match counts as corrupted. Some layer
requests resume with `Range: bytes=N-` first (as Docker does), compared with the whole blob.

Images: a warm set, pulled before the clock starts, is drawn from `cached_share` of the
time; otherwise the worker takes the next cold image, each cold image going to `cold_share`
workers in a row so that cold pulls of one image overlap (single flight under load).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from tests.load.catalog import SCHEMA2, image_repo

ACCEPT = ", ".join([SCHEMA2, "application/vnd.oci.image.manifest.v1+json",
                    "application/vnd.docker.distribution.manifest.list.v2+json",
                    "application/vnd.oci.image.index.v1+json"])
READ = 1 << 20


@dataclass
class Stats:
    pulls: int = 0
    cold_pulls: int = 0
    requests: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    corrupted: int = 0
    bytes: int = 0
    latency: dict[str, list[float]] = field(default_factory=lambda: {"manifest": [], "blob": [], "blob_cold": []})
    error_samples: list[str] = field(default_factory=list)

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.error_samples) < 20:
            self.error_samples.append(f"{kind}: {detail}")

    def summary(self) -> dict:
        def pct(values: list[float], q: float) -> float | None:
            if not values:
                return None
            ordered = sorted(values)
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)
        return {
            "pulls": self.pulls, "cold_pulls": self.cold_pulls,
            "requests": sum(self.requests.values()), "requests_by_kind": dict(self.requests),
            "errors": sum(self.errors.values()), "errors_by_kind": dict(self.errors),
            "error_samples": self.error_samples, "corrupted_blobs": self.corrupted,
            "bytes_received": self.bytes,
            "latency_ms": {kind: {"p50": pct(v, 0.5), "p99": pct(v, 0.99), "n": len(v)}
                           for kind, v in self.latency.items()},
        }


class LoadClients:
    def __init__(self, base_url: str, warm_images: int, cached_share: float = 0.7,
                 cold_share: int = 4, range_share: float = 0.05, seed: int = 7) -> None:
        self.base = base_url
        self.warm_images = warm_images
        self.cached_share = cached_share
        self.cold_share = cold_share
        self.range_share = range_share
        self.stats = Stats()
        self._cold_counter = 0
        self._rng = random.Random(seed)
        self._cold_seen: set[int] = set()

    # -- what to pull ---------------------------------------------------------------------
    def next_image(self) -> tuple[int, bool]:
        if self._rng.random() < self.cached_share:
            return self._rng.randrange(self.warm_images), False
        k = self.warm_images + self._cold_counter // self.cold_share
        self._cold_counter += 1
        return k, True

    # -- running ---------------------------------------------------------------------------
    async def warm(self, session: aiohttp.ClientSession) -> None:
        """Pull the warm set once (so that it is cached), a few images at a time."""
        semaphore = asyncio.Semaphore(8)

        async def one(k: int) -> None:
            async with semaphore:
                await self.pull(session, k, cold=True, record=False)

        await asyncio.gather(*(one(k) for k in range(self.warm_images)))

    async def run(self, session: aiohttp.ClientSession, clients: int, seconds: float) -> None:
        deadline = time.monotonic() + seconds

        async def worker(index: int) -> None:
            rng = random.Random(index)
            while time.monotonic() < deadline:
                k, cold = self.next_image()
                await self.pull(session, k, cold, rng=rng)

        await asyncio.gather(*(worker(i) for i in range(clients)))

    async def pull(self, session: aiohttp.ClientSession, k: int, cold: bool, record: bool = True,
                   rng: random.Random | None = None) -> None:
        rng = rng or random.Random(k)
        repo = image_repo(k)
        stats = self.stats if record else Stats()
        try:
            await self._get(session, stats, "ping", "/v2/")
            digest = await self._head_manifest(session, stats, repo)
            manifest = await self._get_manifest(session, stats, repo, digest)
            descriptors = [manifest["config"], *manifest["layers"]]
        except _Failed:
            return
        semaphore = asyncio.Semaphore(3)

        async def blob(descriptor: dict, is_layer: bool) -> None:
            async with semaphore:
                if is_layer and rng.random() < self.range_share:
                    await self._ranged_blob(session, stats, repo, descriptor, rng, cold)
                else:
                    await self._blob(session, stats, repo, descriptor, cold)

        await asyncio.gather(*(blob(d, i > 0) for i, d in enumerate(descriptors)))
        stats.pulls += 1
        stats.cold_pulls += cold

    # -- requests ---------------------------------------------------------------------------
    async def _get(self, session, stats: Stats, kind: str, path: str) -> bytes:
        stats.requests[kind] += 1
        try:
            async with session.get(self.base + path) as resp:
                body = await resp.read()
                if resp.status != 200:
                    stats.error(kind, f"{path} -> {resp.status} {body[:200]!r}")
                    raise _Failed
                return body
        except aiohttp.ClientError as exc:
            stats.error(kind, f"{path}: {type(exc).__name__}: {exc}")
            raise _Failed from exc

    async def _head_manifest(self, session, stats: Stats, repo: str) -> str:
        stats.requests["manifest_head"] += 1
        started = time.monotonic()
        try:
            async with session.head(f"{self.base}/v2/{repo}/manifests/v1", headers={"Accept": ACCEPT}) as resp:
                stats.latency["manifest"].append(time.monotonic() - started)
                if resp.status != 200 or "Docker-Content-Digest" not in resp.headers:
                    stats.error("manifest_head", f"{repo}:v1 -> {resp.status}")
                    raise _Failed
                return resp.headers["Docker-Content-Digest"]
        except aiohttp.ClientError as exc:
            stats.error("manifest_head", f"{repo}: {type(exc).__name__}: {exc}")
            raise _Failed from exc

    async def _get_manifest(self, session, stats: Stats, repo: str, digest: str) -> dict:
        started = time.monotonic()
        body = await self._get(session, stats, "manifest_get", f"/v2/{repo}/manifests/{digest}")
        stats.latency["manifest"].append(time.monotonic() - started)
        if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            stats.corrupted += 1
            stats.error("manifest_get", f"{repo}@{digest}: body does not match its digest")
            raise _Failed
        return json.loads(body)

    async def _blob(self, session, stats: Stats, repo: str, descriptor: dict, cold: bool,
                    keep: bool = False) -> bytes | None:
        digest, size = descriptor["digest"], descriptor["size"]
        stats.requests["blob"] += 1
        started = time.monotonic()
        hasher = hashlib.sha256()
        parts: list[bytes] = []
        received = 0
        try:
            async with session.get(f"{self.base}/v2/{repo}/blobs/{digest}") as resp:
                stats.latency["blob_cold" if cold else "blob"].append(time.monotonic() - started)
                if resp.status != 200:
                    stats.error("blob", f"{digest} -> {resp.status} {(await resp.read())[:200]!r}")
                    return None
                async for chunk in resp.content.iter_chunked(READ):
                    hasher.update(chunk)
                    received += len(chunk)
                    if keep:
                        parts.append(chunk)
        except aiohttp.ClientError as exc:
            stats.error("blob", f"{digest}: {type(exc).__name__}: {exc}")
            return None
        stats.bytes += received
        if received != size or "sha256:" + hasher.hexdigest() != digest:
            stats.corrupted += 1
            stats.error("blob", f"{digest}: {received} of {size} bytes, or wrong digest")
            return None
        return b"".join(parts) if keep else b""

    async def _ranged_blob(self, session, stats: Stats, repo: str, descriptor: dict,
                           rng: random.Random, cold: bool) -> None:
        digest, size = descriptor["digest"], descriptor["size"]
        start = rng.randrange(size)
        stats.requests["blob_range"] += 1
        try:
            async with session.get(f"{self.base}/v2/{repo}/blobs/{digest}",
                                   headers={"Range": f"bytes={start}-"}) as resp:
                tail = await resp.read()
                expected_range = f"bytes {start}-{size - 1}/{size}"
                if resp.status != 206 or resp.headers.get("Content-Range") != expected_range:
                    stats.error("blob_range", f"{digest} {start}- -> {resp.status} {resp.headers.get('Content-Range')}")
                    return
        except aiohttp.ClientError as exc:
            stats.error("blob_range", f"{digest}: {type(exc).__name__}: {exc}")
            return
        stats.bytes += len(tail)
        whole = await self._blob(session, stats, repo, descriptor, cold, keep=True)
        if whole is not None and whole[start:] != tail:
            stats.corrupted += 1
            stats.error("blob_range", f"{digest} {start}-: bytes differ from the whole blob")


class _Failed(Exception):
    """A request failed (already counted); the pull stops."""
