"""`regcache check`: re-hash stored blobs and manifests, quarantine what does not match."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml
from aiohttp.test_utils import TestClient, TestServer

from regcache.app import SERVICES, create_app
from regcache.check import check_store
from regcache.reference import parse_digest
from regcache.store import FsStore
from tests.fakes.fixtures import fake, make_settings  # noqa: F401  (fixture)
from tests.lifecycle_support import put_image, stored_files


def flip_byte(path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if offset is None else offset
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def regcache_check(tmp_path, root, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "regcache.yaml"
    config.write_text(yaml.safe_dump({"storage": {"root": str(root)}}))
    return subprocess.run([sys.executable, "-m", "regcache", "check", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=120)


def test_check_quarantines_a_corrupted_blob_and_manifest(tmp_path):
    store = FsStore(tmp_path / "data")
    store.prepare()
    image = put_image(store, "library/app", "1", [b"layer one" * 1000, b"layer two" * 1000])
    other = put_image(store, "library/other", "1", [b"fine" * 100])
    bad_blob = store.blob_path(parse_digest(image.blobs[1]))
    bad_manifest = store.manifest_path(parse_digest(other.manifest))
    flip_byte(bad_blob)
    flip_byte(bad_manifest, offset=len(bad_manifest.read_bytes()) - 3)
    before = stored_files(store)

    dry = regcache_check(tmp_path, store.root.parent, "--dry-run", "--json")
    assert dry.returncode == 1
    assert stored_files(store) == before

    run = regcache_check(tmp_path, store.root.parent, "--json")
    assert run.returncode == 1, run.stderr
    report = json.loads(run.stdout)
    assert {(c["kind"], c["digest"]) for c in report["corrupt"]} == {
        ("blob", image.blobs[1]), ("manifest", other.manifest)}
    assert report["quarantined"] == 2
    assert report["checked"] == {"blob": 5, "manifest": 2}
    assert not bad_blob.exists() and not bad_manifest.exists()
    quarantined = sorted(p.name for p in store.quarantine_dir.iterdir())
    assert quarantined == sorted([f"blob-{image.blobs[1].replace(':', '-')}",
                                  f"manifest-{other.manifest.replace(':', '-')}"])
    assert set(before) - set(stored_files(store)) == {bad_blob, bad_manifest}

    clean = regcache_check(tmp_path, store.root.parent)
    assert clean.returncode == 0
    assert "every object matches its digest" in clean.stdout


async def test_server_fetches_a_good_copy_after_quarantine(fake, tmp_path):
    layer = b"precious layer" * 5000
    image = fake.add_image("library/app", "1", [layer])
    app = create_app(make_settings(tmp_path / "data", fake.base_url))
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        digest = image["layers"][0]
        url = f"/v2/library/app/blobs/{digest}"
        assert await (await client.get(url)).read() == layer
        store = app[SERVICES].store
        flip_byte(store.blob_path(parse_digest(digest)))
        report = check_store(store)
        assert [(k, d) for k, d, _ in report.corrupt] == [("blob", digest)]
        gets = fake.count("GET", f"/blobs/{digest}")
        resp = await client.get(url)
        assert resp.status == 200 and await resp.read() == layer
        assert fake.count("GET", f"/blobs/{digest}") == gets + 1
        assert store.blob_path(parse_digest(digest)).read_bytes() == layer
    finally:
        await client.close()
