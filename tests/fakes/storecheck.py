"""What the fault and concurrency tests assert about the store after each scenario.

The store's rules (regcache/store.py): nothing stays in tmp/ once fills end, and a file
under blobs/ is whole and hashes to its name.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path


def tmp_files(root: Path) -> list[str]:
    """Files in <root>/tmp (root is the layout root, <storage.root>/v1)."""
    folder = root / "tmp"
    return sorted(os.listdir(folder)) if folder.exists() else []


def stored_blobs(root: Path) -> dict[str, Path]:
    """digest -> path of every file under <root>/blobs."""
    found: dict[str, Path] = {}
    base = root / "blobs"
    if not base.exists():
        return found
    for dirpath, _, names in os.walk(base):
        for name in names:
            algorithm = Path(dirpath).parent.name
            found[f"{algorithm}:{name}"] = Path(dirpath) / name
    return found


def file_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


def assert_store_clean(root: Path, expect_blobs: set[str] | frozenset[str] = frozenset()) -> None:
    """No temp file; exactly `expect_blobs` stored, each whole and verified."""
    assert tmp_files(root) == [], f"temp files left: {tmp_files(root)}"
    blobs = stored_blobs(root)
    assert set(blobs) == set(expect_blobs), f"stored blobs {sorted(blobs)} != expected {sorted(expect_blobs)}"
    for digest, path in blobs.items():
        assert file_digest(path) == digest, f"stored blob {digest} does not hash to its name"


async def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition") -> float:
    """Poll `predicate` (sync) until true; returns the seconds it took, fails after `timeout`."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)
    return time.monotonic() - started
