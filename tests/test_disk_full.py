"""A full disk: clients still get their images, no partial file is left, and regcache
stores again once space returns (freed by the operator, or by its own eviction below the
`min_free_space` floor).

The store sits on a small tmpfs mounted by the test (we run as root), so the filesystem
really says ENOSPC; it is unmounted at teardown.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from regcache.app import SERVICES, create_app
from regcache.check import check_store
from regcache.reference import parse_digest
from regcache.store import FsStore
from tests.fakes.fixtures import fake, make_settings  # noqa: F401  (fixture)
from tests.lifecycle_support import DAY, age_all, put_image

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def tmpfs():
    mounted: list[Path] = []

    def mount(path: Path, size: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "regcache-test", str(path)], check=True)
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def resize(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def temp_files(store: FsStore) -> list[str]:
    return os.listdir(store.tmp_dir)


@pytest.mark.real_upstream
@pytest.mark.clients
async def test_full_disk_pull_succeeds_and_storing_resumes_when_space_is_freed(hub_upstream, tmp_path, tmpfs):
    from tests.support.client_skopeo import Skopeo
    from tests.support.regcache_proc import RegcacheProcess

    proc = RegcacheProcess(tmp_path / "regcache", upstreams=[hub_upstream.config_entry()],
                           cache={"min_free_space": "16Ki"})
    tmpfs(proc.storage_root, "2m")  # smaller than the image's 4 MiB layer
    store = FsStore(proc.storage_root)
    image = hub_upstream.image("library/layers:latest")
    big = max(image.blobs, key=lambda d: len(image.blobs[d]))
    with proc:
        client = Skopeo(tmp_path / "sk", mirror=proc.host)
        first = await client.copy_to_dir(client.direct_ref("library/layers:latest"), tmp_path / "out1")
        assert first.digest == image.digest
        assert (tmp_path / "out1" / big.split(":")[1]).read_bytes() == image.blobs[big]
        assert temp_files(store) == []                        # the partial fill was dropped
        assert not store.blob_path(parse_digest(big)).exists()
        assert check_store(store).corrupt == []               # what was stored is whole
        assert "cannot store" in proc.log_text()

        resize(proc.storage_root, "64m")                      # the operator frees space
        await client.copy_to_dir(client.direct_ref("library/layers:latest"), tmp_path / "out2")
        assert store.blob_path(parse_digest(big)).read_bytes() == image.blobs[big]
        fetches = hub_upstream.blob_fetches(big)
        third = await client.copy_to_dir(client.direct_ref("library/layers:latest"), tmp_path / "out3")
        assert third.digest == image.digest
        assert hub_upstream.blob_fetches(big) == fetches       # stored again: a cache hit now
    assert temp_files(store) == []


async def test_below_the_free_space_floor_regcache_evicts_and_then_stores_again(fake, tmp_path, tmpfs):
    root = tmpfs(tmp_path / "volume", "8m")
    store = FsStore(root / "data")
    store.prepare()
    old = put_image(store, "library/old", "1", [os.urandom(3 * 2**20)])
    age_all(store, 10 * DAY)                                  # cached, unused for 10 days, not expired
    (root / "filler").write_bytes(b"\0" * (2 * 2**20 + 2**19))  # someone else's 2.5 MiB on the volume
    layer = os.urandom(2**20)
    new = fake.add_image("library/new", "1", [layer])

    app = create_app(make_settings(root / "data", fake.base_url, min_free_space="4Mi"))
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    services = app[SERVICES]
    try:
        url = f"/v2/library/new/blobs/{new['layers'][0]}"
        resp = await client.get(url)
        assert resp.status == 200 and await resp.read() == layer   # served from upstream...
        assert not store.blob_path(parse_digest(new["layers"][0])).exists()  # ...not stored
        assert temp_files(store) == []
        for _ in range(100):                                  # the low-space sweep runs at once
            if services.last_sweep is not None:
                break
            await asyncio.sleep(0.05)
        report = services.last_sweep
        assert report is not None and report.removed["evicted"].bytes >= 3 * 2**20
        tag, manifest, _config, big = old.paths               # LRU: the tag unpins the manifest,
        assert not any(p.exists() for p in (tag, manifest, big))  # which unpins its layer
        stored = False
        for _ in range(100):                                  # storing resumes at the next space check
            assert await (await client.get(url)).read() == layer
            if store.blob_path(parse_digest(new["layers"][0])).exists():
                stored = True
                break
            await asyncio.sleep(0.1)
        assert stored
        gets = fake.count("GET", f"/blobs/{new['layers'][0]}")
        assert await (await client.get(url)).read() == layer
        assert fake.count("GET", f"/blobs/{new['layers'][0]}") == gets
    finally:
        await client.close()
    # The report is what /metrics and the log show: it survives JSON with its figures.
    shown = json.loads(json.dumps(report.to_json()))
    assert shown["ran"] is True
    assert shown["removed"]["evicted"] == {"objects": report.removed["evicted"].objects,
                                           "bytes": report.removed["evicted"].bytes}
