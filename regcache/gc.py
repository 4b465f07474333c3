"""Garbage collection: scan the store, ask `eviction.plan`, remove what it says. Blocking.

Shared by `regcache gc` (the CronJob, another process) and the server's periodic sweep.
It is safe while regcache serves from the same folder:
- Blobs and manifests appear only by atomic rename, whole and verified, so a scan never
  sees a partial object; fills in progress live in tmp/ and are left alone while younger
  than max(grace, fill_timeout) (a fill never runs longer than fill_timeout).
- Nothing accessed or written within `grace` is removed (eviction.py, rule 1), and the
  server refreshes a stale blob's time as it serves it (store.py), so a blob in use is
  always inside the grace window.
- Just before removing a file, its mtime is compared with the scan: if it changed, it
  was used meanwhile and is kept this time, along with everything it references.
- One gc at a time per store (flock on v1/gc.lock): a CronJob run and the server's own
  sweep take turns instead of racing; the one that finds the lock held skips its run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from regcache import eviction
from regcache.config import CacheConfig
from regcache.errors import RegistryError
from regcache.eviction import BLOB, MANIFEST, TAG, Entry, Policy, key_for
from regcache.mediatypes import referenced_digests
from regcache.reference import parse_digest
from regcache.store import FsStore

# progress(phase, done, total or None): called every PROGRESS_EVERY items and at phase ends.
Progress = Callable[[str, int, int | None], None]
PROGRESS_EVERY = 5000


@dataclass(slots=True)
class Tally:
    objects: int = 0
    bytes: int = 0

    def add(self, size: int) -> None:
        self.objects += 1
        self.bytes += size


@dataclass(slots=True)
class Removed:
    kind: str  # tag, manifest, blob, temp
    name: str
    bytes: int
    reason: str  # expired, orphaned, evicted, stale


@dataclass
class GcReport:
    """What one gc run found and did. Content bytes are blob + manifest bytes."""

    dry_run: bool
    ran: bool = True  # False when another gc held the lock
    duration: float = 0.0
    scanned: dict[str, Tally] = field(default_factory=lambda: {k: Tally() for k in (TAG, MANIFEST, BLOB)})
    removed: dict[str, Tally] = field(default_factory=dict)  # by reason
    kept: Tally = field(default_factory=Tally)
    content_bytes_before: int = 0
    content_bytes_after: int = 0
    target_bytes: int | None = None
    target_reached: bool = True
    in_use: int = 0  # planned, but used between scan and removal: kept
    items: list[Removed] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def removed_total(self) -> Tally:
        total = Tally()
        for tally in self.removed.values():
            total.objects += tally.objects
            total.bytes += tally.bytes
        return total

    def removed_by_kind(self) -> dict[str, Tally]:
        out: dict[str, Tally] = {}
        for item in self.items:
            out.setdefault(item.kind, Tally()).add(item.bytes)
        return out

    def removed_manifests(self) -> list[str]:
        return [item.name for item in self.items if item.kind == MANIFEST]

    def record(self, item: Removed) -> None:
        self.items.append(item)
        self.removed.setdefault(item.reason, Tally()).add(item.bytes)

    def to_json(self, with_items: bool = False) -> dict[str, object]:
        out: dict[str, object] = {
            "dry_run": self.dry_run, "ran": self.ran, "duration_seconds": round(self.duration, 3),
            "scanned": {k: _tally(v) for k, v in self.scanned.items()},
            "removed": {k: _tally(v) for k, v in sorted(self.removed.items())},
            "removed_by_kind": {k: _tally(v) for k, v in sorted(self.removed_by_kind().items())},
            "removed_total": _tally(self.removed_total), "kept": _tally(self.kept),
            "content_bytes_before": self.content_bytes_before,
            "content_bytes_after": self.content_bytes_after,
            "target_bytes": self.target_bytes, "target_reached": self.target_reached,
            "in_use": self.in_use, "errors": self.errors,
        }
        if with_items:
            out["items"] = [{"kind": i.kind, "name": i.name, "bytes": i.bytes, "reason": i.reason}
                            for i in self.items]
        return out


def _tally(t: Tally) -> dict[str, int]:
    return {"objects": t.objects, "bytes": t.bytes}


@dataclass(slots=True)
class Snapshot:
    """The store as scanned: eviction entries, plus each object's path and mtime_ns."""

    entries: dict[str, Entry] = field(default_factory=dict)
    files: dict[str, tuple[str, int]] = field(default_factory=dict)
    empty_tag_dirs: list[tuple[str, float]] = field(default_factory=list)


def collect(store: FsStore, cache: CacheConfig, *, now: float | None = None, dry_run: bool = False,
            grace: float | None = None, progress: Progress | None = None,
            free_bytes: int | None = None) -> GcReport:
    """Remove expired, orphaned and over-budget content and stale temp files (see eviction.py)."""
    started = time.monotonic()
    now = time.time() if now is None else now
    grace = cache.gc_grace if grace is None else grace
    report = GcReport(dry_run=dry_run)
    with _exclusive(store, skip=dry_run, report=report) as got_lock:
        if not got_lock:
            report.ran = False
            report.duration = time.monotonic() - started
            return report
        snapshot = scan(store, report, progress)
        policy = Policy(ttl=cache.ttl, grace=grace, max_size=cache.max_size,
                        high_watermark=cache.high_watermark, low_watermark=cache.low_watermark,
                        min_free_space=cache.min_free_space)
        free = _free_bytes(store) if free_bytes is None else free_bytes
        plan = eviction.plan(snapshot.entries, now, policy, free)
        report.content_bytes_before = plan.content_bytes
        report.target_bytes, report.target_reached = plan.target_bytes, plan.target_reached
        _remove_planned(store, snapshot, plan, report, dry_run, progress)
        _remove_stale_tmp(store, now - max(grace, cache.fill_timeout), report, dry_run)
        _remove_empty_dirs(snapshot, now - grace, dry_run)
    removed_content = sum(i.bytes for i in report.items if i.kind in (MANIFEST, BLOB))
    report.content_bytes_after = report.content_bytes_before - removed_content
    removed_keys = {key_for(i.kind, i.name) for i in report.items}
    for key, entry in snapshot.entries.items():
        if key not in removed_keys and entry.kind != TAG:
            report.kept.add(entry.size)
    report.duration = time.monotonic() - started
    return report


@contextlib.contextmanager
def _exclusive(store: FsStore, skip: bool, report: GcReport) -> Iterator[bool]:
    """Hold v1/gc.lock (non-blocking); yields False if another gc holds it or it cannot be made."""
    if skip or not store.root.exists():
        yield True
        return
    try:
        fd = os.open(store.gc_lock_path, os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError as exc:
        report.errors.append(f"cannot open {store.gc_lock_path}: {exc.strerror}")
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


def _free_bytes(store: FsStore) -> int | None:
    try:
        stat = os.statvfs(store.root)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


# -- scanning ------------------------------------------------------------------------------

def scan(store: FsStore, report: GcReport, progress: Progress | None = None) -> Snapshot:
    """Read the store's records: sizes, access times, references (blocking; scandir)."""
    snapshot = Snapshot()
    entries, files = snapshot.entries, snapshot.files
    empty_dirs: list[str] = []
    for kind, items, reader in ((TAG, store.iter_tags(empty_dirs), _tag_refs),
                                (MANIFEST, store.iter_manifests(), _manifest_refs),
                                (BLOB, store.iter_blobs(), None)):
        count = size = 0
        prefix = kind + ":"
        for name, entry in items:
            try:
                st = entry.stat(follow_symlinks=False)
                refs = reader(entry.path) if reader else ()
            except FileNotFoundError:
                continue  # removed since the listing (by the server's re-store or quarantine)
            except OSError as exc:
                report.errors.append(f"cannot read {entry.path}: {exc.strerror}")
                continue
            key = prefix + name
            entries[key] = Entry(key, kind, st.st_size, st.st_mtime, refs)
            files[key] = (entry.path, st.st_mtime_ns)
            count += 1
            size += st.st_size
            if progress and count % PROGRESS_EVERY == 0:
                progress(f"scan {kind}s", count, None)
        report.scanned[kind] = Tally(count, size)
        if progress:
            progress(f"scan {kind}s", count, count)
    snapshot.empty_tag_dirs = _mtimes(empty_dirs)
    return snapshot


def _tag_refs(path: str) -> tuple[str, ...]:
    """The manifest a tag record names; () for an unreadable record (an orphan)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        digest = json.loads(data)["digest"]
        return (key_for(MANIFEST, str(parse_digest(digest))),)
    except (ValueError, KeyError, TypeError, RegistryError):
        return ()


def _manifest_refs(path: str) -> tuple[str, ...]:
    with open(path, "rb") as f:
        data = f.read()
    _, _, body = data.partition(b"\n")
    children, blobs = referenced_digests(body)
    return tuple([key_for(MANIFEST, d) for d in children] + [key_for(BLOB, d) for d in blobs])


def _mtimes(folders: list[str]) -> list[tuple[str, float]]:
    found = []
    for folder in folders:
        with contextlib.suppress(FileNotFoundError):
            found.append((folder, os.stat(folder).st_mtime))
    return found


# -- removing ------------------------------------------------------------------------------

def _remove_planned(store: FsStore, snapshot: Snapshot, plan: eviction.Plan, report: GcReport,
                    dry_run: bool, progress: Progress | None) -> None:
    """Remove in plan order (referrers first); keep whatever was used since the scan."""
    removals = _referrers_first(plan.removals(), snapshot.entries)
    rescued: set[str] = set()
    for done, (key, reason) in enumerate(removals, 1):
        if progress and done % PROGRESS_EVERY == 0:
            progress("remove", done, len(removals))
        if key in rescued:
            continue
        entry = snapshot.entries[key]
        path, mtime_ns = snapshot.files[key]
        outcome = "removed" if dry_run else _remove_if_unchanged(path, mtime_ns, report)
        if outcome == "in_use":
            report.in_use += 1
            rescued |= _closure(entry.refs, snapshot.entries)
        elif outcome == "removed":
            report.record(Removed(entry.kind, key.split(":", 1)[1], entry.size, reason))
    if progress and removals:
        progress("remove", len(removals), len(removals))


def _referrers_first(removals: list[tuple[str, str]], entries: dict[str, Entry]) -> list[tuple[str, str]]:
    """Tags, then indexes, then manifests, then blobs: a referrer goes before what it references."""
    order = {TAG: 0, MANIFEST: 2, BLOB: 3}

    def rank(item: tuple[str, str]) -> int:
        entry = entries[item[0]]
        is_index = entry.kind == MANIFEST and any(r.startswith(MANIFEST + ":") for r in entry.refs)
        return 1 if is_index else order[entry.kind]

    return sorted(removals, key=rank)


def _closure(refs: tuple[str, ...], entries: dict[str, Entry]) -> set[str]:
    out: set[str] = set()
    stack = list(refs)
    while stack:
        key = stack.pop()
        if key not in out and key in entries:
            out.add(key)
            stack.extend(entries[key].refs)
    return out


def _remove_if_unchanged(path: str, mtime_ns: int, report: GcReport) -> str:
    """'removed', 'gone' (someone else removed it) or 'in_use' (touched since the scan)."""
    try:
        if os.stat(path).st_mtime_ns != mtime_ns:
            return "in_use"
        os.unlink(path)
        return "removed"
    except FileNotFoundError:
        return "gone"
    except OSError as exc:
        report.errors.append(f"cannot remove {path}: {exc.strerror}")
        return "error"


def _remove_stale_tmp(store: FsStore, cutoff: float, report: GcReport, dry_run: bool) -> None:
    """Temp files not written since `cutoff` belong to no running fill (crash leftovers)."""
    for entry in store.iter_tmp():
        try:
            st = entry.stat(follow_symlinks=False)
            if st.st_mtime >= cutoff:
                continue
            if not dry_run:
                os.unlink(entry.path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            report.errors.append(f"cannot remove {entry.path}: {exc.strerror}")
            continue
        report.record(Removed("temp", entry.name, st.st_size, "stale"))


def _remove_empty_dirs(snapshot: Snapshot, cutoff: float, dry_run: bool) -> None:
    """Tag folders already empty at the scan and untouched for `grace` (a parent emptied by
    this goes on the next run). A race with a new tag record only costs that record: the
    server logs it and writes it on the next pull."""
    if dry_run:
        return
    for folder, mtime in snapshot.empty_tag_dirs:
        if mtime < cutoff:
            with contextlib.suppress(OSError):
                os.rmdir(folder)


def format_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def summary_lines(report: GcReport) -> list[str]:
    """The human summary printed by `regcache gc`."""
    if not report.ran:
        if report.errors:
            return ["gc: could not start; nothing done"]
        return ["gc: another gc is running on this store; nothing done"]
    verb = "would remove" if report.dry_run else "removed"
    total = report.removed_total
    reasons = ", ".join(f"{t.objects} {r}" for r, t in sorted(report.removed.items())) or "nothing"
    lines = [f"gc: {verb} {total.objects} objects ({format_bytes(total.bytes)}): {reasons}",
             f"gc: kept {report.kept.objects} objects ({format_bytes(report.kept.bytes)}); "
             f"content {format_bytes(report.content_bytes_before)} -> {format_bytes(report.content_bytes_after)}"]
    if report.target_bytes is not None:
        state = "reached" if report.target_reached else "NOT reached (the rest is in use or within grace)"
        lines.append(f"gc: size target {format_bytes(report.target_bytes)} {state}")
    if report.in_use:
        lines.append(f"gc: {report.in_use} objects were used during the run and kept")
    lines.append(f"gc: took {report.duration:.2f} s" + (f"; {len(report.errors)} errors" if report.errors else ""))
    return lines


__all__ = ["GcReport", "Removed", "Tally", "collect", "scan", "summary_lines", "format_bytes"]
