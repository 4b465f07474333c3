"""State gauges computed at scrape time: running fills, store totals, disk free.

Policy (the store may hold 100k files):
- Store totals come from a scan of the store tree in a worker thread, never on the event
  loop, and never once per scrape on a big store: a new scan starts only when the last
  one is older than 50 times its own duration (at most 5 minutes), so scanning costs at
  most ~2% of one core. Scrapes that arrive while a scan runs share it.
- `invalidate()` (after a gc sweep) makes the next scrape rescan.
- Fills and disk free are read on every scrape: a dict walk and one statvfs.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

from regcache.metrics import STORE_KINDS, Metrics
from regcache.store import FsStore, iter_files

MAX_SCAN_AGE = 300.0
SCAN_COST_FACTOR = 50.0

# kind -> folder under the layout root (store.py's layout)
_FOLDERS = {"blob": "blobs", "manifest": "manifests", "tag": "tags", "temp": "tmp", "quarantine": "quarantine"}


class FillLike(Protocol):
    subscribers: int


@dataclass(frozen=True)
class StoreTotals:
    """kind -> (files, bytes), and when the scan finished (wall clock)."""

    by_kind: dict[str, tuple[int, int]] = field(default_factory=dict)
    scanned_at: float = 0.0


def scan_store(store: FsStore) -> StoreTotals:
    """Count files and bytes per kind (blocking: run it in a thread)."""
    totals: dict[str, tuple[int, int]] = {}
    for kind in STORE_KINDS:
        count = size = 0
        for entry in iter_files(store.root / _FOLDERS[kind]):
            try:
                size += entry.stat(follow_symlinks=False).st_size
                count += 1
            except FileNotFoundError:  # removed while we walked (gc, a commit's rename)
                pass
        totals[kind] = (count, size)
    return StoreTotals(totals, time.time())


class StoreScanner:
    """Store totals from a cached scan; see the module docstring for the policy."""

    def __init__(self, store: FsStore) -> None:
        self.store = store
        self._totals: StoreTotals | None = None
        self._finished = 0.0     # monotonic end of the last scan
        self._cost = 0.0         # how long it took
        self._task: asyncio.Task[StoreTotals] | None = None

    def invalidate(self) -> None:
        self._finished = 0.0

    async def totals(self) -> StoreTotals:
        age = time.monotonic() - self._finished
        if self._totals is not None and age < min(MAX_SCAN_AGE, self._cost * SCAN_COST_FACTOR):
            return self._totals
        if self._task is None:
            self._task = asyncio.create_task(self._scan())
        task = self._task
        return await asyncio.shield(task)

    async def _scan(self) -> StoreTotals:
        started = time.monotonic()
        try:
            self._totals = await asyncio.to_thread(scan_store, self.store)
            self._finished = time.monotonic()
            self._cost = self._finished - started
            return self._totals
        finally:
            self._task = None


def disk_usage(path: os.PathLike[str] | str) -> tuple[int, int]:
    """(free bytes for unprivileged writers, filesystem size) of the filesystem at `path`."""
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize, stat.f_blocks * stat.f_frsize


def watch_state(metrics: Metrics, store: FsStore, fills: Callable[[], Iterable[FillLike]]) -> StoreScanner:
    """Register the scrape-time collector for fills, store totals and disk space."""
    scanner = StoreScanner(store)
    seen_sweeps = metrics.gc_sweeps

    async def collect(m: Metrics) -> None:
        nonlocal seen_sweeps
        running = list(fills())
        m.set_fills(len(running), sum(f.subscribers for f in running))
        if m.gc_sweeps != seen_sweeps:  # a sweep removed files: rescan now
            seen_sweeps = m.gc_sweeps
            scanner.invalidate()
        # On OSError (store unreadable: /readyz reports it) the last values stay.
        try:
            totals = await scanner.totals()
            m.set_store(totals.by_kind, totals.scanned_at)
            m.set_disk(*await asyncio.to_thread(disk_usage, store.root))
        except OSError:
            pass

    metrics.add_collector(collect)
    return scanner
