"""Single flight: one upstream request however many clients ask at once (issue 3, items 1-2).

Every test counts the fake upstream's requests and checks the store afterwards: nothing in
tmp/, and a blob under blobs/ only whole and hashing to its name.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

import pytest

from tests.fakes.fixtures import fake, regcache_factory  # noqa: F401  (fixtures)
from tests.fakes.rawhttp import raw_get
from tests.fakes.registry import Fault, sha256
from tests.fakes.storecheck import assert_store_clean, tmp_files, stored_blobs, wait_until

MiB = 1024 * 1024
BLOB_PATH = "/v2/library/big/blobs/{}"


@pytest.fixture(scope="module")
def big_blob() -> bytes:
    return os.urandom(100 * MiB)


async def test_eight_cold_gets_make_one_upstream_fetch(fake, regcache_factory, big_blob):
    digest = fake.add_blob(big_blob)
    rc = await regcache_factory()
    responses = await asyncio.gather(*(raw_get(rc.port, BLOB_PATH.format(digest)) for _ in range(8)))
    for response in responses:
        assert response.status == 200
        assert response.complete and response.length == len(big_blob)
        assert response.sha256 == digest
    assert fake.count("GET", f"/blobs/{digest}") == 1
    assert fake.count(None, digest) == 1  # and no HEAD either
    assert_store_clean(rc.root, {digest})


async def test_late_joiners_stream_before_the_download_ends(fake, regcache_factory, big_blob):
    """Requests arriving at random points of a slow download start at once (no wait for the end)."""
    digest = fake.add_blob(big_blob)
    fake.chunk_size = MiB
    fake.faults[digest] = Fault(chunk_delay=0.03)  # 100 chunks: about 3 s upstream
    rc = await regcache_factory()
    rng = random.Random(3)
    offsets = sorted(rng.uniform(0.2, 2.4) for _ in range(7))
    started = time.monotonic()

    async def joiner(delay: float):
        await asyncio.sleep(delay)
        asked_at = time.monotonic()
        return asked_at, await raw_get(rc.port, BLOB_PATH.format(digest))

    first = asyncio.create_task(raw_get(rc.port, BLOB_PATH.format(digest)))
    joined = await asyncio.gather(*(joiner(d) for d in offsets))
    leader = await first

    [upstream] = fake.matching("GET", f"/blobs/{digest}")
    await wait_until(lambda: upstream.finished is not None, what="upstream handler done")
    assert upstream.outcome == "complete"
    assert leader.status == 200 and leader.complete and leader.sha256 == digest
    for asked_at, response in joined:
        assert response.status == 200 and response.complete and response.sha256 == digest
        # It really joined mid-download ...
        assert upstream.started < asked_at < upstream.finished, (asked_at - started, upstream.finished - started)
        # ... and got headers and bytes before the download ended, within moments of asking.
        assert response.first_byte_at is not None
        assert response.first_byte_at < upstream.finished
        assert response.headers_at - asked_at < 1.0
    assert_store_clean(rc.root, {digest})


async def test_fill_finishes_after_every_client_left(fake, regcache_factory):
    data = os.urandom(20 * MiB)
    digest = fake.add_blob(data)
    fake.chunk_size = 256 * 1024
    fake.faults[digest] = Fault(chunk_delay=0.01)  # about 1 s upstream
    rc = await regcache_factory()
    gone = await asyncio.gather(*(raw_get(rc.port, BLOB_PATH.format(digest), stop_after=MiB)
                                  for _ in range(3)))
    assert all(r.status == 200 and r.ended_by == "client-left" for r in gone)
    assert digest not in stored_blobs(rc.root)  # the clients left well before the end
    await wait_until(lambda: digest in stored_blobs(rc.root), timeout=20, what="blob stored")
    [upstream] = fake.matching("GET", f"/blobs/{digest}")
    await wait_until(lambda: upstream.finished is not None, what="upstream handler done")
    assert upstream.outcome == "complete"
    await wait_until(lambda: not tmp_files(rc.root), what="temp file gone")
    assert_store_clean(rc.root, {digest})
    again = await raw_get(rc.port, BLOB_PATH.format(digest))
    assert again.complete and again.sha256 == digest
    assert fake.count("GET", f"/blobs/{digest}") == 1  # served from the store


async def test_failed_fill_leaves_nothing_and_the_next_request_starts_afresh(fake, regcache_factory):
    data = os.urandom(8 * MiB)
    digest = fake.add_blob(data)
    fake.chunk_size = 256 * 1024
    fake.faults[digest] = Fault(truncate_at=5 * MiB, chunk_delay=0.01, times=1)
    rc = await regcache_factory()
    gone = await raw_get(rc.port, BLOB_PATH.format(digest), stop_after=512 * 1024)
    assert gone.status == 200
    await wait_until(lambda: fake.matching("GET", digest)[0].finished is not None, what="upstream cut")
    await wait_until(lambda: not tmp_files(rc.root), what="temp file removed")
    assert_store_clean(rc.root, set())
    fresh = await raw_get(rc.port, BLOB_PATH.format(digest))
    assert fresh.status == 200 and fresh.complete and fresh.sha256 == digest
    assert fake.count("GET", f"/blobs/{digest}") == 2
    assert_store_clean(rc.root, {digest})


async def test_fill_timeout_bounds_an_abandoned_fill(fake, regcache_factory):
    data = os.urandom(10 * MiB)
    digest = fake.add_blob(data)
    fake.faults[digest] = Fault(chunk_delay=0.05, times=1)  # 160 chunks of 64 KiB: 8 s upstream
    rc = await regcache_factory(fill_timeout="1s")
    asked = time.monotonic()
    gone = await raw_get(rc.port, BLOB_PATH.format(digest), stop_after=100_000)
    assert gone.status == 200
    await wait_until(lambda: fake.matching("GET", digest)[0].finished is not None, timeout=10,
                     what="upstream connection closed by regcache")
    [upstream] = fake.matching("GET", digest)
    assert upstream.outcome == "peer-gone"
    assert upstream.finished - asked < 3.0  # the 1 s fill_timeout, not the 8 s download
    await wait_until(lambda: not tmp_files(rc.root), what="temp file removed")
    assert_store_clean(rc.root, set())
    fresh = await raw_get(rc.port, BLOB_PATH.format(digest))
    assert fresh.complete and fresh.sha256 == digest
    assert fake.count("GET", f"/blobs/{digest}") == 2
    assert_store_clean(rc.root, {digest})


# -- manifests, tag HEADs, blob HEADs and tokens ------------------------------------------

SCHEMA2 = "application/vnd.docker.distribution.manifest.v2+json"


async def test_concurrent_tag_requests_share_one_head(fake, regcache_factory):
    image = fake.add_image("library/app", "v1", [b"layer-1"])
    fake.faults["v1"] = Fault(delay=0.3)  # hold the HEAD in flight while the others arrive
    rc = await regcache_factory()
    path = "/v2/library/app/manifests/v1"
    for round_ in (1, 2):  # cold, then cached: every round revalidates once
        responses = await asyncio.gather(*(raw_get(rc.port, path, {"Accept": SCHEMA2}, keep_body=True)
                                           for _ in range(10)))
        assert {r.status for r in responses} == {200}
        assert {sha256(r.body) for r in responses} == {image["manifest"]}
        assert fake.count("HEAD", "/manifests/v1") == round_
        assert fake.count("GET", "/manifests/") == 1  # by digest, once, on the cold round
    assert fake.count("GET", "/manifests/v1") == 0


async def test_concurrent_manifest_by_digest_requests_share_one_get_or_head(fake, regcache_factory):
    image = fake.add_image("library/app", "v1", [b"layer-1"])
    digest = image["manifest"]
    fake.faults[digest] = Fault(delay=0.3)
    rc = await regcache_factory()
    path = f"/v2/library/app/manifests/{digest}"
    heads = await asyncio.gather(*(raw_get(rc.port, path, {"Accept": SCHEMA2}, method="HEAD")
                                   for _ in range(10)))
    assert {r.status for r in heads} == {200}
    assert fake.count("HEAD", digest) == 1
    gets = await asyncio.gather(*(raw_get(rc.port, path, {"Accept": SCHEMA2}, keep_body=True)
                                  for _ in range(10)))
    assert {sha256(r.body) for r in gets} == {digest}
    assert fake.count("GET", digest) == 1
    assert_store_clean(rc.root, set())


async def test_concurrent_blob_heads_share_one_upstream_head(fake, regcache_factory):
    data = os.urandom(1000)
    digest = fake.add_blob(data)
    fake.faults[digest] = Fault(delay=0.3)
    rc = await regcache_factory()
    heads = await asyncio.gather(*(raw_get(rc.port, BLOB_PATH.format(digest), method="HEAD")
                                   for _ in range(10)))
    assert {r.status for r in heads} == {200}
    assert {r.headers["content-length"] for r in heads} == {"1000"}
    assert fake.count("HEAD", digest) == 1
    assert fake.count("GET", digest) == 0
    assert_store_clean(rc.root, set())


async def test_concurrent_requests_share_one_token_request(fake, regcache_factory):
    fake.require_auth = True
    fake.token_fault = Fault(delay=0.3)
    images = {repo: fake.add_image(repo, "v1", [repo.encode()]) for repo in ("library/a", "library/b")}
    rc = await regcache_factory()
    responses = await asyncio.gather(*(
        raw_get(rc.port, f"/v2/{repo}/manifests/v1", {"Accept": SCHEMA2}, keep_body=True)
        for repo in images for _ in range(8)))
    assert {r.status for r in responses} == {200}
    assert fake.token_requests == 2  # one per scope (repository:<name>:pull)
    scopes = sorted(r.query for r in fake.matching("GET", "/token"))
    assert len(scopes) == 2 and "library/a:pull" in scopes[0] and "library/b:pull" in scopes[1]
    # The tokens are cached: another burst asks the token server nothing.
    again = await asyncio.gather(*(raw_get(rc.port, f"/v2/{repo}/manifests/v1", {"Accept": SCHEMA2})
                                   for repo in images for _ in range(4)))
    assert {r.status for r in again} == {200}
    assert fake.token_requests == 2


async def test_a_late_401_does_not_discard_a_fresh_token(fake, regcache_factory):
    """Two first requests of one scope both meet a 401; the one answered last must reuse the
    token the other fetched meanwhile, not throw it away and ask again."""
    fake.require_auth = True
    fake.add_image("library/app", "slow", [b"one"])
    fake.add_image("library/app", "fast", [b"two"])
    fake.faults["slow"] = Fault(challenge_delay=0.5, times=1)
    rc = await regcache_factory()
    slow, fast = await asyncio.gather(
        raw_get(rc.port, "/v2/library/app/manifests/slow", {"Accept": SCHEMA2}),
        raw_get(rc.port, "/v2/library/app/manifests/fast", {"Accept": SCHEMA2}))
    assert slow.status == fast.status == 200
    assert fake.token_requests == 1


async def test_a_rejected_token_is_replaced_once_for_all_concurrent_requests(fake, regcache_factory):
    fake.require_auth = True
    fake.add_image("library/app", "v1", [b"one"])
    rc = await regcache_factory()
    assert (await raw_get(rc.port, "/v2/library/app/manifests/v1", {"Accept": SCHEMA2})).status == 200
    assert fake.token_requests == 1
    fake.token_value = "rotated-token"  # upstream now rejects the cached token
    fake.token_fault = Fault(delay=0.3)
    tags = [f"t{i}" for i in range(6)]
    for tag in tags:
        fake.add_image("library/app", tag, [tag.encode()])
    responses = await asyncio.gather(*(raw_get(rc.port, f"/v2/library/app/manifests/{tag}", {"Accept": SCHEMA2})
                                       for tag in tags))
    assert {r.status for r in responses} == {200}
    assert fake.token_requests == 2
