"""Pre-warming: pull images through a running regcache so the next pulls are cache hits.

`regcache warm IMAGE... | -f FILE` asks the server exactly what a client would: the
manifest by tag, then for an index every child manifest (every platform, or those named
with --platform), then every config and layer blob, each read to the end and its digest
checked. Going through the server (not straight into the store) reuses its single-flight
fills, auth, routing and storage rules, so a warm run can overlap with CI pulls safely.
A blob shared by several images is fetched once per run.

Image references: `[host/]name[:tag|@digest]`. With a host (`ghcr.io/org/app:v1`) the
request carries `?ns=host`, as containerd sends; without one it goes to the listener's
default upstream, and Docker Hub's `library/` is added by the server.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

import aiohttp

from regcache.config import Settings
from regcache.mediatypes import UPSTREAM_ACCEPT

PROGRESS_SECONDS = 1.0


@dataclass(frozen=True)
class ImageRef:
    ns: str | None
    repo: str
    reference: str  # tag or digest


def parse_image(text: str) -> ImageRef:
    """`ghcr.io/org/app:v1` -> ImageRef("ghcr.io", "org/app", "v1"); tag defaults to latest."""
    rest, _, digest = text.strip().partition("@")
    first, sep, remainder = rest.partition("/")
    ns = None
    if sep and ("." in first or ":" in first or first == "localhost"):
        ns, rest = first, remainder
    name, tag = rest, "latest"
    if rest.rfind(":") > rest.rfind("/"):
        name, _, tag = rest.rpartition(":")
    if not name:
        raise ValueError(f"not an image reference: {text!r}")
    return ImageRef(ns, name, digest or tag)


def read_image_list(path: str) -> list[str]:
    """Image references from a file: one a line; blank lines and # comments ignored."""
    with open(path, encoding="utf-8") as f:
        lines = [line.split("#", 1)[0].strip() for line in f]
    return [line for line in lines if line]


def default_url(settings: Settings) -> str:
    listener = settings.listeners[0]
    host = "127.0.0.1" if listener.address in ("0.0.0.0", "::", "") else listener.address
    return f"http://{host}:{listener.port}"


@dataclass
class WarmSummary:
    images: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    manifests: int = 0
    blobs: int = 0
    bytes: int = 0
    duration: float = 0.0

    def lines(self) -> list[str]:
        from regcache.gc import format_bytes

        out = [f"warm: {len(self.images)} images warmed: {self.manifests} manifests, {self.blobs} blobs "
               f"({format_bytes(self.bytes)}) in {self.duration:.1f} s"]
        out += [f"warm: FAILED {image}: {why}" for image, why in self.failed]
        return out

    def to_json(self) -> dict[str, Any]:
        return {"images": self.images, "failed": [{"image": i, "error": e} for i, e in self.failed],
                "manifests": self.manifests, "blobs": self.blobs, "bytes": self.bytes,
                "duration_seconds": round(self.duration, 3)}


class _Progress:
    """`warm: [#####-----] 12/40 blobs, 34.5/120.0 MiB`: redrawn in place on a terminal,
    a line every PROGRESS_SECONDS otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.total_blobs = self.done_blobs = self.total_bytes = self.done_bytes = 0
        self._last = 0.0

    def show(self, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < (0.1 if self.tty else PROGRESS_SECONDS):
            return
        self._last = now
        share = self.done_bytes / self.total_bytes if self.total_bytes else 1.0
        bar = "#" * int(share * 20) + "-" * (20 - int(share * 20))
        text = (f"warm: [{bar}] {self.done_blobs}/{self.total_blobs} blobs, "
                f"{self.done_bytes / 2**20:.1f}/{self.total_bytes / 2**20:.1f} MiB")
        end = "\n" if final or not self.tty else ""
        print(("\r" if self.tty else "") + text, end=end, file=self.stream, flush=True)


class _Warmer:
    def __init__(self, session: aiohttp.ClientSession, url: str, platforms: list[str],
                 concurrency: int, progress: _Progress, summary: WarmSummary) -> None:
        self.session = session
        self.url = url.rstrip("/")
        self.platforms = set(platforms)
        self.limit = asyncio.Semaphore(concurrency)
        self.progress = progress
        self.summary = summary
        self.blobs_done: dict[str, asyncio.Task[None]] = {}

    def _url(self, ref: ImageRef, kind: str, reference: str) -> str:
        query = f"?ns={ref.ns}" if ref.ns else ""
        return f"{self.url}/v2/{ref.repo}/{kind}/{reference}{query}"

    async def image(self, ref: ImageRef) -> None:
        """The manifest, its children (for an index), then every blob they reference."""
        doc = await self._manifest(ref, ref.reference)
        images = [doc]
        if "manifests" in doc:
            children = [m for m in doc["manifests"] if self._wanted(m.get("platform"))]
            images = list(await asyncio.gather(*(self._manifest(ref, m["digest"]) for m in children)))
        descriptors = [d for image in images for d in _blob_descriptors(image)]
        await asyncio.gather(*(self._blob_once(ref, d) for d in descriptors))

    def _wanted(self, platform: dict[str, str] | None) -> bool:
        if not self.platforms:
            return True
        if not platform:
            return False
        name = f"{platform.get('os')}/{platform.get('architecture')}"
        return name in self.platforms or f"{name}/{platform.get('variant')}" in self.platforms

    async def _manifest(self, ref: ImageRef, reference: str) -> dict[str, Any]:
        async with self.session.get(self._url(ref, "manifests", reference),
                                    headers={"Accept": UPSTREAM_ACCEPT}) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise WarmError(f"manifest {reference}: HTTP {resp.status} {body[:200].decode(errors='replace')}")
        if reference.startswith("sha256:") and _sha256(body) != reference:
            raise WarmError(f"manifest {reference}: content does not match its digest")
        self.summary.manifests += 1
        doc = json.loads(body)
        if not isinstance(doc, dict):
            raise WarmError(f"manifest {reference}: not a JSON object")
        return doc

    def _blob_once(self, ref: ImageRef, descriptor: dict[str, Any]) -> asyncio.Task[None]:
        digest = descriptor["digest"]
        task = self.blobs_done.get(digest)
        if task is None:
            self.progress.total_blobs += 1
            self.progress.total_bytes += int(descriptor.get("size") or 0)
            task = asyncio.ensure_future(self._blob(ref, digest))
            self.blobs_done[digest] = task
        return task

    async def _blob(self, ref: ImageRef, digest: str) -> None:
        async with self.limit, self.session.get(self._url(ref, "blobs", digest)) as resp:
            if resp.status != 200:
                raise WarmError(f"blob {digest}: HTTP {resp.status}")
            hasher = hashlib.sha256()
            async for chunk in resp.content.iter_chunked(1 << 20):
                hasher.update(chunk)
                self.progress.done_bytes += len(chunk)
                self.summary.bytes += len(chunk)
                self.progress.show()
        if digest.startswith("sha256:") and "sha256:" + hasher.hexdigest() != digest:
            raise WarmError(f"blob {digest}: content does not match its digest")
        self.summary.blobs += 1
        self.progress.done_blobs += 1
        self.progress.show()


class WarmError(Exception):
    """One image could not be warmed; the message says which object and why."""


def _blob_descriptors(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = [d for d in doc.get("layers") or [] if isinstance(d, dict) and "digest" in d]
    config = doc.get("config")
    if isinstance(config, dict) and "digest" in config:
        out.append(config)
    return out


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def warm_images(url: str, images: list[str], *, platforms: list[str] | None = None,
                      concurrency: int = 4, stream: TextIO | None = None) -> WarmSummary:
    """Warm each image in turn; a failure is recorded and the others go on."""
    started = time.monotonic()
    summary = WarmSummary()
    progress = _Progress(stream or sys.stderr)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        warmer = _Warmer(session, url, platforms or [], concurrency, progress, summary)
        for image in images:
            try:
                await warmer.image(parse_image(image))
                summary.images.append(image)
            except (WarmError, ValueError, KeyError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
                summary.failed.append((image, str(exc) or type(exc).__name__))
    progress.show(final=True)
    summary.duration = time.monotonic() - started
    return summary
