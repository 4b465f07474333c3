"""Blob bodies sent from worker threads (regcache/web/filesend.py), through the real CLI
(uvloop) against the real upstream: hits with every kind of range, HEAD, a miss streamed
from a running fill, clients leaving mid-body, and more clients than sender threads (the
rest go through aiohttp's own path). Every body is checked whole against its digest, and
upstream fetches are counted from the upstream's own log.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os

import pytest

from regcache.web.filesend import MAX_SENDERS
from tests.fakes.fixtures import fake, regcache_factory  # noqa: F401  (fixtures)
from tests.fakes.rawhttp import raw_get
from tests.support.images import build_image, random_layer
from tests.support.regcache_proc import RegcacheProcess

pytestmark = pytest.mark.real_upstream

MiB = 1 << 20
CLIENTS = MAX_SENDERS + 8


@pytest.fixture
def layers(hub_upstream):
    """Two images of one big random layer each, pushed under their own repository."""
    out = []
    for name in ("one", "two"):
        image = build_image([random_layer(24 * MiB, f"blob-send-{name}")])
        hub_upstream.push(f"library/blobsend-{name}:v1", image)
        digest = image.layer_digests[0]
        out.append((f"/v2/library/blobsend-{name}/blobs/{digest}", digest, image.blobs[digest]))
    return out


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def test_miss_then_hits_with_ranges_and_head(hub_upstream, layers, tmp_path):
    path, digest, data = layers[0]
    size = len(data)
    async with RegcacheProcess(tmp_path, upstreams=[hub_upstream.config_entry()]) as rc:
        miss = await raw_get(rc.port, path)
        assert miss.status == 200 and miss.complete and miss.sha256 == digest
        for header, start, end in [("bytes=0-", 0, size), (f"bytes={size - MiB - 5}-", size - MiB - 5, size),
                                   ("bytes=1000-3000000", 1000, 3000001), ("bytes=-70000", size - 70000, size),
                                   (f"bytes={size - 1}-", size - 1, size)]:
            part = await raw_get(rc.port, path, {"Range": header}, keep_body=True)
            assert part.status == 206, header
            assert part.headers["content-range"] == f"bytes {start}-{end - 1}/{size}"
            assert part.complete and part.body == data[start:end], header
        head = await raw_get(rc.port, path, method="HEAD")
        assert head.status == 200 and head.content_length == size and head.length == 0
        assert head.headers["docker-content-digest"] == digest
        hit = await raw_get(rc.port, path)
        assert hit.status == 200 and hit.complete and hit.sha256 == digest
        assert hit.headers["docker-content-digest"] == digest
    assert hub_upstream.blob_fetches(digest) == 1


async def test_clients_leaving_and_more_clients_than_sender_threads(hub_upstream, layers, tmp_path):
    (hit_path, hit_digest, _), (cold_path, cold_digest, _) = layers
    async with RegcacheProcess(tmp_path, upstreams=[hub_upstream.config_entry()]) as rc:
        assert (await raw_get(rc.port, hit_path)).sha256 == hit_digest  # now stored
        # Clients that go away after 1 MiB, on a hit and on a cold blob: their sender
        # threads must stop and come back, and the fill must go on.
        gone = await asyncio.gather(*(raw_get(rc.port, p, stop_after=MiB)
                                      for p in (hit_path, cold_path) for _ in range(CLIENTS // 2)))
        assert all(r.status == 200 and r.ended_by == "client-left" for r in gone)
        # More clients at once than sender threads, on the hit and on the (now running or
        # finished) fill: every body whole.
        full = await asyncio.gather(*(raw_get(rc.port, p) for p in (hit_path, cold_path) for _ in range(CLIENTS)))
        for response, digest in zip(full, [hit_digest] * CLIENTS + [cold_digest] * CLIENTS):
            assert response.status == 200 and response.complete and response.sha256 == digest
        threads = rc.proc_status("Threads")
        assert threads is not None and threads < MAX_SENDERS + 30  # bounded pools, nothing leaked
    assert hub_upstream.blob_fetches(hit_digest) == 1
    assert hub_upstream.blob_fetches(cold_digest) == 1


async def test_many_cold_clients_at_once(hub_upstream, layers, tmp_path):
    path, digest, data = layers[1]
    async with RegcacheProcess(tmp_path, upstreams=[hub_upstream.config_entry()]) as rc:
        responses = await asyncio.gather(*(raw_get(rc.port, path) for _ in range(CLIENTS)))
        for response in responses:
            assert response.status == 200 and response.complete and response.sha256 == sha(data)
    assert hub_upstream.blob_fetches(digest) == 1


async def test_hits_where_the_filesystem_refuses_sendfile(fake, regcache_factory, monkeypatch):
    """Some filesystems answer sendfile() with EINVAL: the sender copies with pread/write."""
    data = os.urandom(5 * MiB + 123)
    digest = fake.add_blob(data)
    rc = await regcache_factory()
    path = f"/v2/library/nosendfile/blobs/{digest}"
    assert (await raw_get(rc.port, path)).sha256 == digest  # stored now
    calls = []

    def refuse(*args):
        calls.append(args)
        raise OSError(errno.EINVAL, "sendfile not supported here")

    monkeypatch.setattr(os, "sendfile", refuse)
    hit = await raw_get(rc.port, path)
    assert hit.status == 200 and hit.complete and hit.sha256 == digest
    part = await raw_get(rc.port, path, {"Range": "bytes=4000000-"}, keep_body=True)
    assert part.status == 206 and part.body == data[4000000:]
    assert calls  # the sender did try sendfile first
    assert fake.count("GET", f"/blobs/{digest}") == 1
