"""`regcache gc`, the command the CronJob runs: dry run, JSON and human summaries, exit
status, progress, the lock, and a run while 8 real clients pull through a running regcache.

The CLI runs as a subprocess, exactly as the CronJob does; the store is built with the
store's own writers (tests/lifecycle_support.py) or by pulls through regcache.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from regcache.reference import parse_digest
from regcache.store import FsStore
from tests.lifecycle_support import (
    DAY, age, age_all, content_bytes, put_image, put_tag, stored_files,
)


def write_config(tmp_path: Path, root: Path, **cache) -> Path:
    path = tmp_path / "regcache.yaml"
    path.write_text(yaml.safe_dump({"storage": {"root": str(root)}, "cache": cache}))
    return path


def regcache_gc(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "regcache", "gc", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=120)


def item_path(store: FsStore, item: dict) -> Path:
    if item["kind"] == "blob":
        return store.blob_path(parse_digest(item["name"]))
    if item["kind"] == "manifest":
        return store.manifest_path(parse_digest(item["name"]))
    if item["kind"] == "tag":
        return store.tag_path_by_name(item["name"])
    return store.tmp_dir / item["name"]


@pytest.fixture
def store(tmp_path) -> FsStore:
    store = FsStore(tmp_path / "data")
    store.prepare()
    return store


def build_mixed_store(store: FsStore) -> dict[str, list[Path]]:
    """Old images, a fresh one sharing a layer with an old one, an orphan, temp files."""
    base = os.urandom(20_000)
    old = [put_image(store, f"library/old{i}", "1", [base, os.urandom(5_000)]) for i in range(3)]
    fresh = put_image(store, "library/fresh", "1", [base, os.urandom(7_000)])
    age_all(store, 40 * DAY)
    age(fresh.paths[:2], 3600 * 2)  # tag and manifest used two hours ago; blobs look old
    orphan = put_tag(store, "library/orphan", "1", "sha256:" + "0" * 64)
    age([orphan], 2 * DAY)
    stale = store.tmp_dir / "left-by-a-crash"
    stale.write_bytes(b"s" * 300)
    age([stale], DAY)
    return {"old": [p for im in old for p in im.paths if p != old[0].paths[3]],
            "kept": fresh.paths, "orphan": [orphan], "stale": [stale]}


def test_dry_run_lists_everything_and_removes_nothing_then_gc_removes_exactly_that(store, tmp_path):
    parts = build_mixed_store(store)
    config = write_config(tmp_path, store.root.parent)
    before = stored_files(store)

    dry = regcache_gc(config, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert stored_files(store) == before and all(p.exists() for p in parts["stale"])
    listed = {item_path(store, i) for i in planned["items"]}
    assert listed == set(parts["old"]) | set(parts["orphan"]) | set(parts["stale"])

    run = regcache_gc(config, "--json", "--list")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    after = stored_files(store)
    assert {item_path(store, i) for i in report["items"]} == listed
    assert set(before) - set(after) == set(parts["old"]) | set(parts["orphan"])
    assert all(p.exists() for p in parts["kept"])  # the shared base too, via the fresh manifest
    # The summary's numbers are the store's, before and after.
    assert report["content_bytes_before"] == sum(s for p, s in before.items() if "/tags/" not in str(p))
    assert report["content_bytes_after"] == content_bytes(store)
    assert report["kept"]["objects"] == len([p for p in after if "/tags/" not in str(p)])
    removed_files = sum(before[p] for p in set(before) - set(after))
    assert report["removed_total"]["bytes"] == removed_files + 300  # + the stale temp file
    assert report["removed"]["expired"]["objects"] == len(parts["old"])
    assert report["removed"]["orphaned"]["objects"] == 1
    assert report["removed"]["stale"]["objects"] == 1


def test_human_summary_progress_and_exit_status(store, tmp_path):
    build_mixed_store(store)
    config = write_config(tmp_path, store.root.parent)
    run = regcache_gc(config, "--progress", "0")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("gc: removed 14 objects (")
    assert "12 expired" in lines[0] and "1 orphaned" in lines[0] and "1 stale" in lines[0]
    assert lines[1].startswith("gc: kept 4 objects")
    assert lines[-1].startswith("gc: took ")
    assert "gc: scan blobs" in run.stderr and "gc: remove" in run.stderr

    again = regcache_gc(config)
    assert again.returncode == 0 and again.stdout.startswith("gc: removed 0 objects")
    missing = regcache_gc(write_config(tmp_path, tmp_path / "no-such-store"))
    assert missing.returncode == 0 and "does not exist" in missing.stderr


def test_grace_flag_and_lock(store, tmp_path):
    image = put_image(store, "library/recent", "1", [b"recent"])
    config = write_config(tmp_path, store.root.parent, ttl="1h")
    age(image.paths, 2 * 3600)
    assert json.loads(regcache_gc(config, "--json", "--grace", "3h").stdout)["removed_total"]["objects"] == 0
    with open(store.gc_lock_path, "rb") as held:  # the server's own sweep is running
        fcntl.flock(held, fcntl.LOCK_EX)
        blocked = regcache_gc(config, "--json")
    assert blocked.returncode == 0 and json.loads(blocked.stdout)["ran"] is False
    assert all(p.exists() for p in image.paths)
    assert regcache_gc(config, "--grace", "1m").returncode == 0
    assert not any(p.exists() for p in image.paths)
    assert regcache_gc(config, "--grace", "soon").returncode == 2


def test_exit_status_is_1_when_removal_fails(store, tmp_path):
    """A read-only store (bind mount, remounted ro): a real failure, reported on stderr."""
    put_image(store, "library/stuck", "1", [b"stuck"])
    age_all(store, 40 * DAY)
    store.gc_lock_path.touch()
    config = write_config(tmp_path, store.root.parent)
    root = str(store.root)
    subprocess.run(["mount", "--bind", root, root], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", root, root], check=True)
        run = regcache_gc(config)
    finally:
        subprocess.run(["umount", root], check=True)
    assert run.returncode == 1
    assert "Read-only file system" in run.stderr
    assert "errors" in run.stdout.splitlines()[-1]


# -- gc while 8 clients pull through a running regcache -----------------------------------------

PULLS = ["library/layers:latest"] * 3 + ["library/multi:latest"] * 3 + ["library/hello:latest"] * 2


@pytest.mark.real_upstream
@pytest.mark.clients
async def test_gc_while_8_clients_pull(hub_upstream, tmp_path):
    from tests.support.client_skopeo import Skopeo
    from tests.support.regcache_proc import RegcacheProcess

    proc = RegcacheProcess(tmp_path / "regcache", upstreams=[hub_upstream.config_entry()])
    store = FsStore(proc.storage_root)
    # Before: two images pulled long ago (hello's content is pulled again below), a crash's
    # temp file, and a fill that is running right now (a temp file written a minute ago).
    with proc:
        warmer = Skopeo(tmp_path / "sk-warm", mirror=proc.host)
        for ref in ("library/multioci:latest", "library/hello:latest"):
            await warmer.copy_to_dir(warmer.direct_ref(ref), tmp_path / ref.replace("/", "_").replace(":", "_"))
    age_all(store, 40 * DAY)

    with proc:  # (the server clears tmp/ as it starts: these two appear after)
        (store.tmp_dir / "crashed").write_bytes(b"c" * 100)
        age([store.tmp_dir / "crashed"], DAY)
        in_flight = store.tmp_dir / "in-flight-fill"
        in_flight.write_bytes(b"f" * 100)
        age([in_flight], 60)
        clients = [Skopeo(tmp_path / f"sk{i}", mirror=proc.host) for i in range(len(PULLS))]

        async def pull(i: int, client: Skopeo, ref: str):
            await asyncio.sleep(0.3 * i)  # staggered, so that several gc runs overlap pulls
            return await client.copy_to_dir(client.direct_ref(ref), tmp_path / f"out{i}")

        pulls = [asyncio.create_task(pull(i, c, ref)) for i, (c, ref) in enumerate(zip(clients, PULLS))]
        runs = []
        while not runs or not all(p.done() for p in pulls):
            runs.append(await gc_run_checked(store, proc.config_path))
        results = await asyncio.gather(*pulls)
        final = await gc_run_checked(store, proc.config_path, quiet=True)

    for ref, result in zip(PULLS, results):
        image = hub_upstream.image(ref)
        assert result.digest == image.digest and result.content == image.content_digests
    assert len(runs) >= 2  # gc ran several times while the clients pulled
    assert in_flight.exists() and not (store.tmp_dir / "crashed").exists()
    # The first run removed multioci's own content (nobody pulled it) while the clients pulled.
    removed = {i["name"] for run in runs for i in run["items"]}
    multioci = hub_upstream.image("library/multioci:latest")
    pulled = set().union(*(hub_upstream.image(r).content_digests for r in set(PULLS)))
    assert multioci.content_digests - pulled <= removed
    assert final["removed_total"]["objects"] == 0 and final["target_reached"]


def identity(path: Path) -> tuple[int, int] | None:
    """Inode and mtime: a file removed and written again (or touched) differs; None once gone."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def stored_digest(path: Path) -> str:
    """What a stored blob or manifest hashes to (a manifest file starts with its media type line)."""
    data = path.read_bytes()
    if "/manifests/" in str(path):
        data = data.split(b"\n", 1)[1]
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def gc_run_checked(store: FsStore, config: Path, quiet: bool = False) -> dict:
    """Run `regcache gc --json --list` and check it against the store before and after:
    it removed only what was there before and what it lists, and its numbers add up."""
    before = stored_files(store)
    seen = {path: identity(path) for path in before}
    run = await asyncio.to_thread(regcache_gc, config, "--json", "--list")
    after = stored_files(store)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    listed = {item_path(store, i): i for i in report["items"] if i["kind"] != "temp"}
    assert set(listed) <= set(before)                       # nothing it had not seen
    assert all(before[p] == i["bytes"] for p, i in listed.items())
    assert set(before) - set(after) <= set(listed)          # nothing else went
    for path in set(listed) & set(after):                   # back already: a client fetched it again,
        assert identity(path) != seen[path], f"{path} listed as removed but never left"
        if listed[path]["kind"] != "tag":                   # and what came back is whole
            assert stored_digest(path) == listed[path]["name"], path
    scanned = sum(t["bytes"] for k, t in report["scanned"].items() if k != "tag")
    assert scanned == report["content_bytes_before"]
    removed_content = sum(i["bytes"] for i in listed.values() if i["kind"] != "tag")
    assert report["content_bytes_after"] == report["content_bytes_before"] - removed_content
    assert report["kept"]["bytes"] == report["content_bytes_after"]
    if quiet:  # nothing else writes: the numbers are exactly the store's
        assert report["content_bytes_before"] == sum(s for p, s in before.items() if "/tags/" not in str(p))
        assert report["content_bytes_after"] == content_bytes(store)
    await asyncio.sleep(0.05)
    return report
