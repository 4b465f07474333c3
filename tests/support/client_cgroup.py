"""Removing the cgroups that containers started by our daemons leave behind.

Runtimes create cgroup directories under the host's cgroup hierarchy (a
mount namespace does not hide it), and empty parents stay after the
containers are gone. Each harness puts its containers under a parent of its
own (a unique name) and removes that parent, bottom-up, after stopping.
rmdir on a cgroup only succeeds when it has no processes, so nothing that
still runs is touched.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _hierarchies() -> list[Path]:
    """The cgroup v2 root itself, or each v1 controller directory."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return [CGROUP_ROOT]
    return [p for p in CGROUP_ROOT.iterdir() if p.is_dir() and not p.is_symlink()]


def _remove_sync(name: str) -> list[str]:
    left = []
    for root in _hierarchies():
        top = root / name.strip("/")
        if not top.is_dir():
            continue
        for dirpath, _dirs, _files in os.walk(top, topdown=False):
            try:
                os.rmdir(dirpath)
            except OSError:
                left.append(dirpath)
    return left


async def remove_cgroup(name: str) -> list[str]:
    """Remove cgroup `name` in every hierarchy; returns dirs that remained."""
    return await asyncio.to_thread(_remove_sync, name)
