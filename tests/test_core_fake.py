"""Core pull-through behaviour against the in-process fake upstream."""

from __future__ import annotations

import os

from tests.fakes.fixtures import fake, regcache  # noqa: F401  (fixtures)
from tests.fakes.registry import sha256


async def test_blob_miss_then_hit_fetches_once(fake, regcache):
    data = os.urandom(300_000)
    digest = fake.add_blob(data)
    for _ in range(2):
        resp = await regcache.get(f"/v2/library/alpine/blobs/{digest}")
        assert resp.status == 200
        assert await resp.read() == data
        assert resp.headers["Docker-Content-Digest"] == digest
    assert fake.count("GET", f"/blobs/{digest}") == 1


async def test_manifest_by_tag_revalidates_with_head_only(fake, regcache):
    image = fake.add_image("library/alpine", "3", [b"layer-one"])
    for _ in range(3):
        resp = await regcache.get("/v2/alpine/manifests/3")
        assert resp.status == 200
        body = await resp.read()
        assert sha256(body) == image["manifest"]
        assert resp.headers["Content-Type"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert fake.count("HEAD", "/manifests/3") == 3
    assert fake.count("GET", "/manifests/") == 1
