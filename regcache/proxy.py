"""The pull-through cache: composes the store and the upstream clients.

Freshness policy, stated once here:
- A manifest by digest is immutable: served from memory or disk once stored; fetched from
  upstream with GET only on a miss, verified against the digest, stored.
- A manifest by tag is revalidated on every request with an upstream HEAD, which Docker Hub
  does not count as a pull; concurrent revalidations of one tag share one HEAD. Same digest:
  served from the cache. New digest: fetched by digest and stored. A GET by tag is sent only
  if upstream's HEAD gives no digest, or the client's Accept excludes the cached type.
- If the HEAD fails (down, 429, 5xx, timeout), the last known digest of the tag is served
  (stale, counted). With no cached copy the client gets the mapped error fast.
- A blob is served from disk when stored; otherwise one `BlobFill` per digest downloads it
  while every asking client streams from it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, TypeVar

from regcache.config import CacheConfig
from regcache.errors import (
    RegistryError,
    UpstreamError,
    UpstreamNotFound,
    to_registry_error,
)
from regcache.fill import BlobFill
from regcache.mediatypes import acceptable
from regcache.reference import Digest, parse_digest
from regcache.singleflight import SingleFlight
from regcache.store import AccessRecorder, BlobWriter, FsStore, StoredManifest, TagRecord
from regcache.upstream.client import FetchedManifest, ManifestHead, UpstreamClient

log = logging.getLogger("regcache.proxy")

T = TypeVar("T")

MEMORY_MANIFEST_BYTES = 32 * 1024 * 1024
RECENT_FILL_SECONDS = 5.0
FREE_SPACE_CHECK_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class ManifestAnswer:
    """What to send for a manifest request; `body` is None for a HEAD answered upstream."""

    digest: str
    media_type: str
    size: int
    body: bytes | None
    cache_result: str  # HIT, MISS, STALE, REVALIDATED, PASS


@dataclass(frozen=True, slots=True)
class LocalBlob:
    path: Path
    size: int


@dataclass(frozen=True, slots=True)
class RemoteBlob:
    """A blob not stored: served from a running fill (or only its size, for HEAD)."""

    size: int
    fill: BlobFill | None
    cache_result: str  # MISS or JOINED


# Hooks for metrics: (kind, result) such as ("manifest", "hit"), ("blob", "joined").
CacheObserver = Callable[[str, str], None]


class PullThroughCache:
    """Serves manifests and blobs from the store, fetching from upstream on a miss."""

    def __init__(self, store: FsStore, clients: dict[str, UpstreamClient], cache: CacheConfig,
                 access: AccessRecorder, observe: CacheObserver | None = None) -> None:
        self.store = store
        self.clients = clients
        self.cache = cache
        self.access = access
        self.fills: dict[str, BlobFill] = {}
        self._recent: dict[str, BlobFill] = {}  # committed fills, kept a moment (_just_committed)
        self._observe = observe or (lambda kind, result: None)
        self._heads: SingleFlight[tuple[str, str, str], ManifestHead] = SingleFlight()
        self._gets: SingleFlight[tuple[str, str, str], FetchedManifest] = SingleFlight()
        self._blob_heads: SingleFlight[tuple[str, str, str], int | None] = SingleFlight()
        self._memory: OrderedDict[str, StoredManifest] = OrderedDict()
        self._memory_bytes = 0
        self._known_tags: dict[tuple[str, str, str], str] = {}
        self._space_checked = 0.0
        self._space_ok = True
        self.on_low_space: Callable[[], None] | None = None  # set by app.Services: run a sweep

    # -- manifests ----------------------------------------------------------------------
    async def manifest_by_digest(self, upstream: str, repo: str, digest: Digest,
                                 head: bool) -> ManifestAnswer:
        stored = await self._load_manifest(digest)
        if stored is not None:
            self._observe("manifest", "hit")
            return _answer(stored, "HIT")
        client = self.clients[upstream]
        if head:
            info = await self.call_upstream(
                self._heads.do((upstream, repo, str(digest)), lambda: client.head_manifest(repo, str(digest))),
                "MANIFEST_UNKNOWN")
            self._observe("manifest", "miss")
            return ManifestAnswer(str(digest), info.media_type, info.size or 0, None, "MISS")
        fetched = await self._fetch_manifest(client, repo, str(digest))
        self._observe("manifest", "miss")
        return ManifestAnswer(fetched.digest, fetched.media_type, len(fetched.body), fetched.body, "MISS")

    async def manifest_by_tag(self, upstream: str, repo: str, tag: str,
                              accepted: frozenset[str], head: bool) -> ManifestAnswer:
        client = self.clients[upstream]
        key = (upstream, repo, tag)
        try:
            info = await self._heads.do(key, lambda: client.head_manifest(repo, tag))
        except UpstreamNotFound as exc:
            raise RegistryError("MANIFEST_UNKNOWN", detail={"tag": tag}) from exc
        except UpstreamError as exc:
            return await self._stale_tag(key, accepted, exc)
        if info.digest is None or not info.digest.startswith(("sha256:", "sha512:")):
            # Upstream HEAD without a digest: only a GET can tell (counts as a Hub pull).
            fetched = await self._fetch_manifest(client, repo, tag)
            info = ManifestHead(fetched.digest, fetched.media_type, len(fetched.body))
        head_digest = info.digest or ""  # set on both paths above
        digest = parse_digest(head_digest)
        await self._observe_revalidation(key, head_digest)
        stored = await self._load_manifest(digest)
        if stored is not None and not acceptable(stored.media_type, accepted):
            return await self._pass_through(client, repo, tag, accepted)
        if stored is None:
            if head:
                self._observe("manifest", "miss")
                return ManifestAnswer(head_digest, info.media_type, info.size or 0, None, "MISS")
            fetched = await self._fetch_manifest(client, repo, head_digest)
            stored = StoredManifest(fetched.digest, fetched.media_type, fetched.body)
            result = "MISS"
        else:
            result = "HIT"
        await self._remember_tag(key, stored)
        self._observe("manifest", result.lower())
        return _answer(stored, result)

    async def _observe_revalidation(self, key: tuple[str, str, str], digest: str) -> None:
        """Metrics: did upstream's HEAD confirm the digest this tag had? (Not counted for a
        tag seen for the first time: that is a lookup, not a revalidation.)"""
        previous = self._known_tags.get(key)
        if previous is None:
            record = await self.store.get_tag(*key)
            previous = record.digest if record is not None else None
        if previous is not None:
            self._observe("revalidation", "unchanged" if previous == digest else "changed")

    async def _stale_tag(self, key: tuple[str, str, str], accepted: frozenset[str],
                         exc: UpstreamError) -> ManifestAnswer:
        """Upstream could not revalidate: serve the last known digest if we have it."""
        record = await self.store.get_tag(*key)
        if record is not None:
            self._observe("revalidation", "failed")
        stored = await self._load_manifest(parse_digest(record.digest)) if record else None
        if stored is None or not acceptable(stored.media_type, accepted):
            self._observe("manifest", "error")
            raise to_registry_error(exc, "MANIFEST_UNKNOWN") from exc
        log.warning("serving %s/%s:%s stale: %s", *key, exc)
        self.access.touch(self.store.tag_path(*key))
        self._observe("manifest", "stale")
        return _answer(stored, "STALE")

    async def _pass_through(self, client: UpstreamClient, repo: str, tag: str,
                            accepted: frozenset[str]) -> ManifestAnswer:
        """The client cannot take the cached type: give it what upstream has for its Accept."""
        fetched = await self.call_upstream(client.get_manifest(repo, tag, accept=", ".join(sorted(accepted))),
                                   "MANIFEST_UNKNOWN")
        await self._store_manifest(fetched)
        self._observe("manifest", "miss")
        return ManifestAnswer(fetched.digest, fetched.media_type, len(fetched.body), fetched.body, "PASS")

    async def _fetch_manifest(self, client: UpstreamClient, repo: str, reference: str) -> FetchedManifest:
        """GET a manifest once for all concurrent askers, verify it, store it by digest."""
        expected = reference if ":" in reference else None

        async def fetch() -> FetchedManifest:
            fetched = await client.get_manifest(repo, reference, expected_digest=expected)
            await self._store_manifest(fetched)
            return fetched

        return await self.call_upstream(self._gets.do((client.name, repo, reference), fetch), "MANIFEST_UNKNOWN")

    async def _store_manifest(self, fetched: FetchedManifest) -> None:
        digest = parse_digest(fetched.digest)
        try:
            await self.store.put_manifest(digest, fetched.media_type, fetched.body)
        except OSError as exc:
            log.warning("cannot store manifest %s: %s", fetched.digest, exc)
        self._remember_manifest(StoredManifest(fetched.digest, fetched.media_type, fetched.body))

    async def _load_manifest(self, digest: Digest) -> StoredManifest | None:
        key = str(digest)
        stored = self._memory.get(key)
        if stored is None:
            stored = await self.store.get_manifest(digest)
            if stored is None:
                return None
            self._remember_manifest(stored)
        else:
            self._memory.move_to_end(key)
        self.access.touch(self.store.manifest_path(digest))
        return stored

    def _remember_manifest(self, stored: StoredManifest) -> None:
        if stored.digest in self._memory:
            return
        self._memory[stored.digest] = stored
        self._memory_bytes += len(stored.body)
        while self._memory_bytes > MEMORY_MANIFEST_BYTES:
            _, old = self._memory.popitem(last=False)
            self._memory_bytes -= len(old.body)

    def forget_manifest(self, digest: str) -> None:
        """Drop a manifest from memory (gc removed it from disk)."""
        old = self._memory.pop(digest, None)
        if old is not None:
            self._memory_bytes -= len(old.body)

    def forget_tag(self, upstream: str, repo: str, tag: str) -> None:
        """gc removed the tag record: write it again on the next pull of this tag."""
        self._known_tags.pop((upstream, repo, tag), None)

    async def _remember_tag(self, key: tuple[str, str, str], stored: StoredManifest) -> None:
        """Write the tag record only when the digest changed; otherwise just touch it."""
        if self._known_tags.get(key) != stored.digest:
            record = TagRecord(stored.digest, stored.media_type, len(stored.body), time.time())
            try:
                await self.store.put_tag(*key, record)
                self._known_tags[key] = stored.digest
            except OSError as exc:
                log.warning("cannot store tag %s/%s:%s: %s", *key, exc)
                return
        self.access.touch(self.store.tag_path(*key))

    # -- blobs --------------------------------------------------------------------------
    async def blob(self, upstream: str, repo: str, digest: Digest, head: bool) -> LocalBlob | RemoteBlob:
        """A stored blob, or a running fill to stream from (started if needed)."""
        path = self.store.blob_path(digest)
        size = await self.store.blob_size(digest)
        if size is not None:
            self.access.touch(path)
            self._observe("blob", "hit")
            return LocalBlob(path, size)
        fill = self.fills.get(str(digest))
        if fill is None and self._just_committed(digest) is not None:
            # Committed while we looked; gc or check may have removed it since: look again.
            size = await self.store.blob_size(digest)
            if size is not None:
                self.access.touch(path)
                self._observe("blob", "hit")
                return LocalBlob(path, size)
        if fill is not None and fill.joinable():
            size = await self.call_upstream(fill.wait_started(), "BLOB_UNKNOWN")
            self._observe("blob", "joined")
            return RemoteBlob(size, fill, "JOINED")
        client = self.clients[upstream]
        if head:
            size = await self.call_upstream(
                self._blob_heads.do((upstream, repo, str(digest)), lambda: client.head_blob(repo, str(digest))),
                "BLOB_UNKNOWN")
            if size is not None:
                self._observe("blob", "miss")
                return RemoteBlob(size, None, "MISS")
        fill = self._start_fill(client, repo, digest)
        size = await self.call_upstream(fill.wait_started(), "BLOB_UNKNOWN")
        self._observe("blob", "miss")
        return RemoteBlob(size, fill, "MISS")

    def _start_fill(self, client: UpstreamClient, repo: str, digest: Digest) -> BlobFill:
        storing = self._storing_allowed()
        fill = BlobFill(digest, (lambda: self._new_writer(digest)) if storing else None, self._fill_finished)
        if storing or str(digest) not in self.fills:
            self.fills[str(digest)] = fill
        fill.start(lambda: client.open_blob(repo, str(digest)), self.cache.fill_timeout)
        return fill

    def _just_committed(self, digest: Digest) -> BlobFill | None:
        """A fill that committed `digest` while our stat of the store was in flight.

        Without this a request that saw no blob on disk and then no running fill would
        start a second upstream download of a blob that is already stored.
        """
        fill = self._recent.get(str(digest))
        return fill if fill is not None and fill.committed_path is not None else None

    def _new_writer(self, digest: Digest) -> BlobWriter | None:
        """A temp file for the fill, or None (serve without storing) if it cannot be created
        (blocking: the fill calls it in a worker thread)."""
        try:
            return self.store.new_blob_writer(digest)
        except OSError as exc:
            log.warning("cannot store %s (%s); serving it from upstream without caching", digest, exc)
            return None

    def _fill_finished(self, fill: BlobFill) -> None:
        if self.fills.get(str(fill.digest)) is fill:
            del self.fills[str(fill.digest)]
            if fill.committed_path is not None:
                self._recent[str(fill.digest)] = fill
                asyncio.get_running_loop().call_later(
                    RECENT_FILL_SECONDS, functools.partial(self._recent.pop, str(fill.digest), None))
        self._observe("fill", "committed" if fill.committed_path else "failed" if fill.error else "uncached")

    def _storing_allowed(self) -> bool:
        """Below `min_free_space` new blobs are served from upstream without storing them,
        and the sweep is asked to evict (`on_low_space`); storing resumes when space returns.
        Checked at most every FREE_SPACE_CHECK_SECONDS (statvfs is a cheap syscall)."""
        now = time.monotonic()
        if now - self._space_checked > FREE_SPACE_CHECK_SECONDS:
            self._space_checked = now
            was_ok = self._space_ok
            try:
                stat = os.statvfs(self.store.root)
                self._space_ok = stat.f_bavail * stat.f_frsize >= self.cache.min_free_space
            except OSError:
                self._space_ok = False
            if was_ok != self._space_ok:
                if self._space_ok:
                    log.info("free space is back above %d bytes: storing new blobs again", self.cache.min_free_space)
                else:
                    log.warning("free space below %d bytes: not storing new blobs", self.cache.min_free_space)
            if not self._space_ok and self.on_low_space is not None:
                self.on_low_space()
        return self._space_ok

    async def shutdown(self) -> None:
        """Cancel running fills (their temp files are removed)."""
        tasks = [f.task for f in self.fills.values() if f.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- helpers ------------------------------------------------------------------------
    @staticmethod
    async def call_upstream(awaitable: Awaitable[T], not_found_code: str) -> T:
        """Await upstream work, mapping its failure to the client's registry error."""
        try:
            return await awaitable
        except UpstreamError as exc:
            raise to_registry_error(exc, not_found_code) from exc


def _answer(stored: StoredManifest, result: str) -> ManifestAnswer:
    return ManifestAnswer(stored.digest, stored.media_type, len(stored.body), stored.body, result)
