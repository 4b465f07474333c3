"""Upstream outage (issue 3, item 5): the cache keeps serving what it has.

Cached tags (stale, after a failed revalidation), manifests by digest and blobs are served
while upstream is down, rate-limiting, failing with 5xx or silent. Uncached content gets a
registry JSON error at once (clients then fall back to the next host, wire-protocol.md 1.6
and 2.3) -- measured to be well under the upstream timeouts, not a hang.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from tests.fakes.fixtures import fake, regcache_factory  # noqa: F401  (fixtures)
from tests.fakes.rawhttp import RawResponse, raw_get
from tests.fakes.registry import Fault, sha256
from tests.fakes.storecheck import assert_store_clean

SCHEMA2 = "application/vnd.docker.distribution.manifest.v2+json"
FAST = 0.5  # seconds; the upstream timeouts in these tests are 2 s (connect and read)


async def timed(coro) -> tuple[float, RawResponse]:
    started = time.monotonic()
    response = await coro
    return time.monotonic() - started, response


@pytest.fixture
async def warm(fake, regcache_factory):
    """regcache with library/app:v1 pulled once (manifest and blobs cached); library/app:v2
    and one blob exist upstream but were never pulled."""
    cached = fake.add_image("library/app", "v1", [os.urandom(300_000), os.urandom(200_000)])
    uncached = fake.add_image("library/app", "v2", [os.urandom(100_000)])
    rc = await regcache_factory()
    manifest = await raw_get(rc.port, "/v2/library/app/manifests/v1", {"Accept": SCHEMA2}, keep_body=True)
    assert manifest.status == 200
    for digest in [cached["config"], *cached["layers"]]:
        response = await raw_get(rc.port, f"/v2/library/app/blobs/{digest}")
        assert response.complete and response.sha256 == digest
    return rc, cached, uncached


async def assert_cached_content_served(rc, cached) -> None:
    for method in ("GET", "HEAD"):
        seconds, response = await timed(raw_get(rc.port, "/v2/library/app/manifests/v1", {"Accept": SCHEMA2},
                                                method=method, keep_body=True))
        assert response.status == 200, response.body
        assert response.headers["docker-content-digest"] == cached["manifest"]
        if method == "GET":
            assert sha256(response.body) == cached["manifest"]
        assert seconds < FAST
    by_digest = await raw_get(rc.port, f"/v2/library/app/manifests/{cached['manifest']}", {"Accept": SCHEMA2},
                              keep_body=True)
    assert by_digest.status == 200 and sha256(by_digest.body) == cached["manifest"]
    for digest in [cached["config"], *cached["layers"]]:
        response = await raw_get(rc.port, f"/v2/library/app/blobs/{digest}")
        assert response.status == 200 and response.complete and response.sha256 == digest
    ping = await raw_get(rc.port, "/v2/")
    assert ping.status == 200


async def assert_uncached_fails_fast(rc, uncached, status: int, code: str) -> list[RawResponse]:
    paths = ["/v2/library/app/manifests/v2", f"/v2/library/app/manifests/{uncached['manifest']}",
             f"/v2/library/app/blobs/{uncached['layers'][0]}", "/v2/library/other/manifests/latest"]
    answers = []
    for path in paths:
        seconds, response = await timed(raw_get(rc.port, path, {"Accept": SCHEMA2}))
        assert response.status == status, (path, response.body)
        assert response.json()["errors"][0]["code"] == code
        assert seconds < FAST, (path, seconds)
        answers.append(response)
    return answers


async def test_upstream_down(fake, warm):
    rc, cached, uncached = warm
    port = fake.port
    await fake.stop()
    await assert_cached_content_served(rc, cached)
    await assert_uncached_fails_fast(rc, uncached, 502, "UNAVAILABLE")
    assert_store_clean(rc.root, {cached["config"], *cached["layers"]})
    # Back up: the uncached image is fetched, the cached tag revalidated again.
    await fake.serve(port)
    back = await raw_get(rc.port, "/v2/library/app/manifests/v2", {"Accept": SCHEMA2}, keep_body=True)
    assert back.status == 200 and sha256(back.body) == uncached["manifest"]
    blob = await raw_get(rc.port, f"/v2/library/app/blobs/{uncached['layers'][0]}")
    assert blob.complete and blob.sha256 == uncached["layers"][0]


@pytest.mark.parametrize("status,expected_status,code", [
    (429, 429, "TOOMANYREQUESTS"),
    (500, 502, "UNAVAILABLE"),
    (503, 502, "UNAVAILABLE"),
])
async def test_upstream_failing_every_request(fake, warm, status, expected_status, code):
    rc, cached, uncached = warm
    retry_after = "120" if status == 429 else None
    for ref in ["v1", "v2", "latest", cached["manifest"], uncached["manifest"],
                cached["config"], *cached["layers"], *uncached["layers"]]:
        fake.faults[ref] = Fault(status=status, retry_after=retry_after)
    before = len(fake.requests)
    await assert_cached_content_served(rc, cached)
    # Only the tag revalidations went upstream (and failed); digests were served locally.
    assert {r.method for r in fake.requests[before:]} == {"HEAD"}
    answers = await assert_uncached_fails_fast(rc, uncached, expected_status, code)
    if retry_after:
        assert {a.headers.get("retry-after") for a in answers} == {retry_after}
    assert_store_clean(rc.root, {cached["config"], *cached["layers"]})


async def test_upstream_silent_is_bounded_by_the_read_timeout(fake, warm):
    """An upstream that accepts connections and never answers: the cached tag is served after
    the revalidation times out (read_timeout, 2 s here), uncached content gets a 504; nothing hangs."""
    rc, cached, uncached = warm
    port = fake.port
    await fake.stop()
    accepted: list[asyncio.StreamWriter] = []

    async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read()  # until regcache gives up and closes

    server = await asyncio.start_server(black_hole, "127.0.0.1", port)
    try:
        seconds, response = await timed(raw_get(rc.port, "/v2/library/app/manifests/v1", {"Accept": SCHEMA2}))
        assert response.status == 200 and response.headers["docker-content-digest"] == cached["manifest"]
        assert 1.5 < seconds < 4
        seconds, response = await timed(raw_get(rc.port, f"/v2/library/app/blobs/{uncached['layers'][0]}"))
        assert response.status == 504 and response.json()["errors"][0]["code"] == "UNAVAILABLE"
        assert 1.5 < seconds < 4
        assert accepted
    finally:
        server.close()
        for writer in accepted:
            writer.close()
        await server.wait_closed()
    assert_store_clean(rc.root, {cached["config"], *cached["layers"]})
