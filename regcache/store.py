"""Content-addressed storage on a local filesystem.

On-disk layout (layout version v1), computed only by the path helpers below::

    <root>/v1/blobs/sha256/<hex[0:2]>/<hex>        blob bytes, verified, committed by rename
    <root>/v1/manifests/sha256/<hex[0:2]>/<hex>    b"<media type>\\n" + manifest bytes verbatim
    <root>/v1/tags/<upstream>/<repo>/_tags/<tag>   JSON {"digest","media_type","size","validated_at"}
    <root>/v1/tmp/<random>                         in-progress writes; never served
    <root>/v1/quarantine/<kind>-<alg>-<hex>        content that failed an integrity check
    <root>/v1/gc.lock                              flock held by a running gc (server sweep or CLI)

`_tags` cannot collide with a repository component (components start with [a-z0-9]).

Policy: a file appears under blobs/ or manifests/ only whole and with its digest checked
(the writer hashes, the commit renames); temp files left by a crash are removed at start.
The mtime of a blob, manifest or tag file is its last-access time: `AccessRecorder` keeps
touches in memory and writes them in batches, so the hot path never syncs to disk. A
blob whose on-disk time is older than `refresh_after` is touched at once when it is read,
so a gc in another process (same grace) never takes a blob that is being served.

The interface is small and async so that an object-store backend can sit behind it later.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

from regcache.reference import Digest

LAYOUT = "v1"


@dataclass(frozen=True, slots=True)
class TagRecord:
    """What a tag pointed to when last validated upstream."""

    digest: str
    media_type: str
    size: int
    validated_at: float


@dataclass(frozen=True, slots=True)
class StoredManifest:
    digest: str
    media_type: str
    body: bytes


class Store(Protocol):
    """What the proxy needs from storage."""

    def blob_path(self, digest: Digest) -> Path: ...
    async def blob_size(self, digest: Digest) -> int | None: ...
    def new_blob_writer(self, digest: Digest) -> "BlobWriter": ...
    async def get_manifest(self, digest: Digest) -> StoredManifest | None: ...
    async def put_manifest(self, digest: Digest, media_type: str, body: bytes) -> None: ...
    async def get_tag(self, upstream: str, repo: str, tag: str) -> TagRecord | None: ...
    async def put_tag(self, upstream: str, repo: str, tag: str, record: TagRecord) -> None: ...


class FsStore:
    """The filesystem implementation of `Store`."""

    def __init__(self, root: Path, refresh_after: float | None = None) -> None:
        self.root = Path(root) / LAYOUT
        self.tmp_dir = self.root / "tmp"
        self.tags_dir = self.root / "tags"
        self.quarantine_dir = self.root / "quarantine"
        self.gc_lock_path = self.root / "gc.lock"
        self.refresh_after = refresh_after

    # -- paths (the only place paths are built) ---------------------------------------
    def blob_path(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / digest.hex[:2] / digest.hex

    def manifest_path(self, digest: Digest) -> Path:
        return self.root / "manifests" / digest.algorithm / digest.hex[:2] / digest.hex

    def tag_path(self, upstream: str, repo: str, tag: str) -> Path:
        return self.tags_dir / upstream / repo / "_tags" / tag

    def tag_path_by_name(self, name: str) -> Path:
        """The tag record for a name from `iter_tags` ("<upstream>/<repo>/_tags/<tag>")."""
        return self.tags_dir / name

    def classify(self, path: Path) -> tuple[str, str | tuple[str, str, str]] | None:
        """("blob"|"manifest", "<alg>:<hex>") or ("tag", (upstream, repo, tag)) for a store path."""
        try:
            parts = Path(path).relative_to(self.root).parts
        except ValueError:
            return None
        if len(parts) == 4 and parts[0] in ("blobs", "manifests"):
            return parts[0][:-1], f"{parts[1]}:{parts[3]}"
        if len(parts) >= 5 and parts[0] == "tags" and parts[-2] == "_tags":
            return "tag", (parts[1], "/".join(parts[2:-2]), parts[-1])
        return None

    def quarantine_path(self, kind: str, name: str) -> Path:
        """Where `check` moves a bad object named "<algorithm>:<hex>" (by iter_blobs/iter_manifests)."""
        return self.quarantine_dir / f"{kind}-{name.replace(':', '-').replace('/', '_')}"

    def new_tmp_path(self) -> Path:
        return self.tmp_dir / secrets.token_hex(12)

    # -- lifecycle ----------------------------------------------------------------------
    def prepare(self) -> int:
        """Create the tree and remove temp files a crash left behind (blocking; at start)."""
        for sub in ("blobs", "manifests", "tags", "tmp", "quarantine"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        removed = 0
        for entry in os.scandir(self.tmp_dir):
            try:
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                pass
        return removed

    def is_writable(self) -> bool:
        """True if a file can be created and removed in the temp folder (blocking, tiny)."""
        probe = self.tmp_dir / f".probe-{secrets.token_hex(4)}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
            return True
        except OSError:
            return False

    # -- blobs --------------------------------------------------------------------------
    async def blob_size(self, digest: Digest) -> int | None:
        try:
            return await asyncio.to_thread(self._stat_for_read, self.blob_path(digest))
        except FileNotFoundError:
            return None

    def _stat_for_read(self, path: Path) -> int:
        st = os.stat(path)
        if self.refresh_after is not None and time.time() - st.st_mtime > self.refresh_after:
            # At most once per refresh_after per blob: keeps a served blob inside gc's grace.
            try:
                os.utime(path)
            except FileNotFoundError:
                raise
            except OSError:
                pass  # read-only store: serving matters more than the access time
        return st.st_size

    # -- iteration (blocking; for gc and check) ------------------------------------------
    def iter_blobs(self) -> Iterator[tuple[str, os.DirEntry[str]]]:
        """("<algorithm>:<hex>", file) for every committed blob."""
        return _iter_content(self.root / "blobs")

    def iter_manifests(self) -> Iterator[tuple[str, os.DirEntry[str]]]:
        """("<algorithm>:<hex>", file) for every stored manifest."""
        return _iter_content(self.root / "manifests")

    def iter_tags(self, empty_dirs: list[str] | None = None) -> Iterator[tuple[str, os.DirEntry[str]]]:
        """("<upstream>/<repo>/_tags/<tag>", file) for every tag record; folders below
        tags/ holding nothing at all are appended to `empty_dirs` (gc removes them)."""
        prefix = len(str(self.tags_dir)) + 1
        stack = [str(self.tags_dir)]
        while stack:
            folder = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except (FileNotFoundError, NotADirectoryError):
                continue
            if not entries and empty_dirs is not None and len(folder) >= prefix:
                empty_dirs.append(folder)
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    yield entry.path[prefix:], entry

    def iter_tmp(self) -> Iterator[os.DirEntry[str]]:
        return iter_files(self.tmp_dir)

    def new_blob_writer(self, digest: Digest) -> "BlobWriter":
        return BlobWriter(self, digest)

    # -- manifests ----------------------------------------------------------------------
    async def get_manifest(self, digest: Digest) -> StoredManifest | None:
        try:
            data = await asyncio.to_thread(self.manifest_path(digest).read_bytes)
        except FileNotFoundError:
            return None
        media_type, _, body = data.partition(b"\n")
        return StoredManifest(str(digest), media_type.decode(), body)

    async def put_manifest(self, digest: Digest, media_type: str, body: bytes) -> None:
        """Store verified manifest bytes (the caller hashed them) atomically."""
        data = media_type.encode() + b"\n" + body
        await asyncio.to_thread(self._write_atomic, self.manifest_path(digest), data)

    # -- tags ---------------------------------------------------------------------------
    async def get_tag(self, upstream: str, repo: str, tag: str) -> TagRecord | None:
        try:
            data = await asyncio.to_thread(self.tag_path(upstream, repo, tag).read_bytes)
            return TagRecord(**json.loads(data))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    async def put_tag(self, upstream: str, repo: str, tag: str, record: TagRecord) -> None:
        data = json.dumps(_asdict(record)).encode()
        await asyncio.to_thread(self._write_atomic, self.tag_path(upstream, repo, tag), data)

    def _write_atomic(self, path: Path, data: bytes) -> None:
        tmp = self.new_tmp_path()
        try:
            with open(tmp, "wb") as f:  # a full disk fails here: no partial file is left
                f.write(data)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise


def _asdict(record: TagRecord) -> dict[str, object]:
    return {name: getattr(record, name) for name in record.__slots__}


def _unlink_quietly(path: Path | str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class BlobWriter:
    """Writes a blob to a temp file, hashing as it goes; `commit` verifies and renames.

    Blocking methods: call them through `asyncio.to_thread` (the fill does, in large chunks).
    """

    def __init__(self, store: FsStore, digest: Digest) -> None:
        self.store = store
        self.digest = digest
        self.tmp_path = store.new_tmp_path()
        self._file = open(self.tmp_path, "wb")
        self.written = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self.written += len(data)

    def flush(self) -> None:
        self._file.flush()

    def commit(self, verified_size: int) -> Path:
        """Rename into place; the caller has verified the digest of exactly these bytes."""
        self._file.close()
        if self.written != verified_size:
            self.abort()
            raise ValueError(f"blob writer has {self.written} bytes, expected {verified_size}")
        final = self.store.blob_path(self.digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.tmp_path, final)
        return final

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        _unlink_quietly(self.tmp_path)


def new_hasher(digest: Digest) -> "hashlib._Hash":
    return hashlib.new(digest.algorithm)


class AccessRecorder:
    """Remembers last-access times in memory and writes them as file mtimes in batches."""

    def __init__(self) -> None:
        self._pending: dict[Path, float] = {}
        # Paths touched but gone at the last flush (gc removed them): the server forgets
        # what it remembers about them, so they are stored again on the next request.
        self.missing: list[Path] = []

    def touch(self, path: Path) -> None:
        self._pending[path] = time.time()

    def flush(self) -> int:
        """Apply pending touches (blocking). Files deleted meanwhile are skipped."""
        pending, self._pending = self._pending, {}
        done = 0
        missing = []
        for path, when in pending.items():
            try:
                os.utime(path, (when, when))
                done += 1
            except FileNotFoundError:
                missing.append(path)
        self.missing = missing
        return done


def _iter_content(top: Path) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """Files at <top>/<algorithm>/<xx>/<hex>, named "<algorithm>:<hex>"; other names skipped."""
    for algorithm in _subdirs(top):
        for shard in _subdirs(Path(algorithm.path)):
            for entry in _scandir(Path(shard.path)):
                if entry.name.startswith(shard.name) and entry.is_file(follow_symlinks=False):
                    yield f"{algorithm.name}:{entry.name}", entry


def _subdirs(folder: Path) -> list[os.DirEntry[str]]:
    return [e for e in _scandir(folder) if e.is_dir(follow_symlinks=False)]


def _scandir(folder: Path) -> list[os.DirEntry[str]]:
    try:
        return list(os.scandir(folder))
    except FileNotFoundError:
        return []


def iter_files(folder: Path) -> Iterator[os.DirEntry[str]]:
    """Every regular file below `folder`, depth first, via scandir (fast for 100k files)."""
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from iter_files(Path(entry.path))
        elif entry.is_file(follow_symlinks=False):
            yield entry
