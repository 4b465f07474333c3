"""`Range: bytes=N-` on an uncached blob (Docker resumes with it; wire-protocol.md 4.8).

The answer is a 206 with the exact Content-Range at once, streamed from the one download in
flight, which still fills the whole blob into the store. Upstream gets one plain GET (no
Range): the cache wants every byte anyway, to verify the digest.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from tests.fakes.fixtures import fake, regcache_factory  # noqa: F401  (fixtures)
from tests.fakes.rawhttp import raw_get
from tests.fakes.registry import Fault, sha256
from tests.fakes.storecheck import assert_store_clean, stored_blobs, tmp_files, wait_until

MiB = 1024 * 1024
SIZE = 20 * MiB


@pytest.fixture
def slow_blob(fake):
    """A 20 MiB blob the fake sends in about 1.6 s."""
    data = os.urandom(SIZE)
    digest = fake.add_blob(data)
    fake.chunk_size = 256 * 1024
    fake.faults[digest] = Fault(chunk_delay=0.02)
    return data, digest


async def _upstream_done(fake, digest):
    [upstream] = fake.matching("GET", f"/blobs/{digest}")
    await wait_until(lambda: upstream.finished is not None, what="upstream body sent")
    return upstream


@pytest.mark.parametrize("start", [0, 1, 5 * MiB + 7, SIZE - 10, SIZE - 1])
async def test_open_range_on_a_miss_answers_at_once(fake, regcache_factory, slow_blob, start):
    data, digest = slow_blob
    rc = await regcache_factory()
    response = await raw_get(rc.port, f"/v2/library/app/blobs/{digest}", {"Range": f"bytes={start}-"},
                             keep_body=True)
    upstream = await _upstream_done(fake, digest)
    assert response.status == 206
    assert response.headers["content-range"] == f"bytes {start}-{SIZE - 1}/{SIZE}"
    assert response.content_length == SIZE - start
    assert response.headers["docker-content-digest"] == digest
    assert response.complete and response.body == data[start:]
    # Headers went out while the download was still running, not after it.
    assert response.headers_at < upstream.finished - 0.5
    assert fake.count("GET", f"/blobs/{digest}") == 1
    assert "Range" not in upstream.headers and upstream.outcome == "complete"
    assert_store_clean(rc.root, {digest})


async def test_closed_range_on_a_miss_is_sent_before_the_download_ends(fake, regcache_factory, slow_blob):
    data, digest = slow_blob
    rc = await regcache_factory()
    response = await raw_get(rc.port, f"/v2/library/app/blobs/{digest}", {"Range": "bytes=1000-1999"},
                             keep_body=True)
    upstream = await _upstream_done(fake, digest)
    assert response.status == 206
    assert response.headers["content-range"] == f"bytes 1000-1999/{SIZE}"
    assert response.complete and response.body == data[1000:2000]
    # Not the blob's end, so nothing to hold back until verification.
    assert response.done_at < upstream.finished
    await wait_until(lambda: not tmp_files(rc.root), what="fill committed")
    assert_store_clean(rc.root, {digest})


async def test_ranges_join_a_running_fill(fake, regcache_factory, slow_blob):
    data, digest = slow_blob
    rc = await regcache_factory()
    path = f"/v2/library/app/blobs/{digest}"
    full = asyncio.create_task(raw_get(rc.port, path))
    await asyncio.sleep(0.4)
    starts = [0, 3 * MiB, 12 * MiB + 5, SIZE - 2]
    parts = await asyncio.gather(*(raw_get(rc.port, path, {"Range": f"bytes={s}-"}, keep_body=True)
                                   for s in starts))
    whole = await full
    assert whole.complete and whole.sha256 == digest
    for start, part in zip(starts, parts):
        assert part.status == 206 and part.headers["content-range"] == f"bytes {start}-{SIZE - 1}/{SIZE}"
        assert part.complete and sha256(part.body) == sha256(data[start:])
    assert fake.count("GET", f"/blobs/{digest}") == 1
    await _upstream_done(fake, digest)
    assert_store_clean(rc.root, {digest})


async def test_range_client_leaving_does_not_stop_the_fill(fake, regcache_factory, slow_blob):
    data, digest = slow_blob
    rc = await regcache_factory()
    gone = await raw_get(rc.port, f"/v2/library/app/blobs/{digest}", {"Range": "bytes=4096-"},
                         stop_after=64 * 1024)
    assert gone.status == 206 and gone.ended_by == "client-left"
    upstream = await _upstream_done(fake, digest)
    assert upstream.outcome == "complete"
    await wait_until(lambda: digest in stored_blobs(rc.root), what="blob stored")
    assert_store_clean(rc.root, {digest})
    hit = await raw_get(rc.port, f"/v2/library/app/blobs/{digest}", {"Range": "bytes=4096-"}, keep_body=True)
    assert hit.status == 206 and hit.body == data[4096:]
    assert fake.count("GET", f"/blobs/{digest}") == 1


async def test_unsatisfiable_range_on_a_miss_is_416_and_the_blob_still_fills_once(fake, regcache_factory, slow_blob):
    data, digest = slow_blob
    rc = await regcache_factory()
    response = await raw_get(rc.port, f"/v2/library/app/blobs/{digest}", {"Range": f"bytes={SIZE}-"})
    assert response.status == 416
    assert response.headers["content-range"] == f"bytes */{SIZE}"
    assert response.json()["errors"][0]["code"] == "RANGE_INVALID"
    # The size lookup started the fill; it completes into the store, once.
    await _upstream_done(fake, digest)
    assert fake.count("GET", f"/blobs/{digest}") == 1
    await wait_until(lambda: not tmp_files(rc.root), what="fill done")
    assert_store_clean(rc.root, {digest})
