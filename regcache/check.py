"""Integrity check: re-hash every stored blob and manifest; quarantine what does not match.

A stored object's name is its digest, so the check needs nothing but the files. A blob
hashes its whole file; a manifest hashes the bytes after its "<media type>\\n" line.
A mismatch (bit rot, a truncated file after a crash of the filesystem, a hand edit) is
moved to <root>/v1/quarantine/<kind>-<algorithm>-<hex> with a rename: the server then
sees a miss and fetches a good copy from upstream on the next request, and the bad bytes
stay for inspection. Safe while serving: committed objects are never rewritten in place
(a re-fill renames a new file over the name, which the check then simply reads).
Hashing runs in a few threads; hashlib releases the GIL on large updates.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from regcache.eviction import BLOB, MANIFEST
from regcache.store import FsStore

Progress = Callable[[str, int, int | None], None]
READ_SIZE = 1024 * 1024
WORKERS = 4


@dataclass
class CheckReport:
    checked: dict[str, int] = field(default_factory=lambda: {BLOB: 0, MANIFEST: 0})
    checked_bytes: int = 0
    corrupt: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, digest, actual)
    quarantined: int = 0
    errors: list[str] = field(default_factory=list)
    duration: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {"checked": self.checked, "checked_bytes": self.checked_bytes,
                "corrupt": [{"kind": k, "digest": d, "actual": a} for k, d, a in self.corrupt],
                "quarantined": self.quarantined, "errors": self.errors,
                "duration_seconds": round(self.duration, 3)}


def check_store(store: FsStore, *, quarantine: bool = True, progress: Progress | None = None) -> CheckReport:
    """Hash every blob and manifest; move mismatches to quarantine/ unless `quarantine` is False."""
    started = time.monotonic()
    report = CheckReport()
    work = [(MANIFEST, name, entry.path) for name, entry in store.iter_manifests()] + \
           [(BLOB, name, entry.path) for name, entry in store.iter_blobs()]
    with ThreadPoolExecutor(WORKERS) as pool:
        for done, (kind, name, path, result) in enumerate(pool.map(_hash_one, work), 1):
            if progress and (done % 1000 == 0 or done == len(work)):
                progress("hash", done, len(work))
            if isinstance(result, OSError):
                if not isinstance(result, FileNotFoundError):  # removed by gc meanwhile: fine
                    report.errors.append(f"cannot read {path}: {result.strerror}")
                continue
            actual, size = result
            report.checked[kind] += 1
            report.checked_bytes += size
            if actual != name:
                report.corrupt.append((kind, name, actual))
                if quarantine:
                    _quarantine(store, kind, name, path, report)
    report.duration = time.monotonic() - started
    return report


def _hash_one(item: tuple[str, str, str]) -> tuple[str, str, str, tuple[str, int] | OSError]:
    kind, name, path = item
    algorithm = name.split(":", 1)[0]
    try:
        hasher = hashlib.new(algorithm)
    except ValueError:
        return kind, name, path, (f"{algorithm}:unsupported", 0)
    size = 0
    try:
        with open(path, "rb") as f:
            if kind == MANIFEST:
                f.readline()  # the media type line is not part of the manifest bytes
            while chunk := f.read(READ_SIZE):
                hasher.update(chunk)
                size += len(chunk)
    except OSError as exc:
        return kind, name, path, exc
    return kind, name, path, (f"{algorithm}:{hasher.hexdigest()}", size)


def _quarantine(store: FsStore, kind: str, name: str, path: str, report: CheckReport) -> None:
    try:
        target = store.quarantine_path(kind, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        report.quarantined += 1
    except FileNotFoundError:
        pass
    except OSError as exc:
        report.errors.append(f"cannot quarantine {path}: {exc}")


def summary_lines(report: CheckReport) -> list[str]:
    from regcache.gc import format_bytes

    lines = [f"check: {report.checked[BLOB]} blobs and {report.checked[MANIFEST]} manifests "
             f"({format_bytes(report.checked_bytes)}) hashed in {report.duration:.2f} s"]
    for kind, digest, actual in report.corrupt:
        lines.append(f"check: CORRUPT {kind} {digest} (content hashes to {actual})")
    if report.corrupt:
        lines.append(f"check: {report.quarantined} of {len(report.corrupt)} corrupt objects moved to quarantine")
    else:
        lines.append("check: every object matches its digest")
    return lines
