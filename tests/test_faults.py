"""Upstream faults (issue 3, item 4), each against the in-process fake upstream.

For every fault: the client gets a registry JSON error when no response headers were sent
yet, or a dropped connection once they were (never a short blob that ends cleanly: checked
with a raw HTTP client that compares the bytes received with Content-Length); the store
holds no temp file and no partial blob; the upstream was asked once; and the next request,
with upstream healthy again, gets the whole blob. SIGKILL mid-fill is at the end, against a
`regcache serve` subprocess.
"""

from __future__ import annotations

import asyncio
import os
import time

import aiohttp
import pytest

from tests.fakes.fixtures import fake, regcache_factory  # noqa: F401  (fixtures)
from tests.fakes.rawhttp import RawResponse, raw_get
from tests.fakes.registry import FakeRegistry, Fault, sha256
from tests.fakes.storecheck import (
    assert_store_clean,
    stored_blobs,
    tmp_files,
    wait_until,
)
from tests.support.regcache_proc import RegcacheProcess, upstream_entry

MiB = 1024 * 1024
SIZE = 4 * MiB
SCHEMA2 = "application/vnd.docker.distribution.manifest.v2+json"


@pytest.fixture
def blob(fake):
    data = os.urandom(SIZE)
    return data, fake.add_blob(data)


def blob_path(digest: str) -> str:
    return f"/v2/library/app/blobs/{digest}"


def assert_dropped(response: RawResponse) -> None:
    """Headers were out: the body must end short and without a clean end."""
    assert response.status in (200, 206)
    assert response.content_length is not None
    assert not response.complete, "a failed blob must never end cleanly"
    assert response.length < response.content_length
    assert response.ended_by in ("eof", "ConnectionResetError", "IncompleteReadError"), response.ended_by


def assert_json_error(response: RawResponse, status: int, code: str) -> None:
    assert response.status == status, response.body
    assert response.headers["content-type"].startswith("application/json")
    errors = response.json()["errors"]
    assert errors and errors[0]["code"] == code, errors


async def assert_next_request_succeeds(fake: FakeRegistry, rc, data: bytes, digest: str,
                                       upstream_gets: int) -> None:
    await wait_until(lambda: not tmp_files(rc.root), what="temp files removed")
    assert_store_clean(rc.root, set())
    good = await raw_get(rc.port, blob_path(digest))
    assert good.status == 200 and good.complete and good.sha256 == digest
    assert fake.count("GET", digest) == upstream_gets
    assert_store_clean(rc.root, {digest})


# -- faults after the response headers: the connection must be dropped --------------------

# Slowed a little (64 chunks x 5 ms) so that all three requests share the failing download.
MID_BODY_FAULTS = {
    "connection dropped mid-blob": dict(truncate_at=SIZE // 2),
    "corrupt bytes": dict(corrupt=True),
    "more bytes than the blob": dict(extra_bytes=1000),
    "stall mid-body past read_timeout": dict(stall_after=SIZE // 2),
}


@pytest.mark.parametrize("name", list(MID_BODY_FAULTS))
async def test_mid_body_fault_drops_every_client(fake, regcache_factory, blob, name):
    data, digest = blob
    fake.faults[digest] = Fault(**MID_BODY_FAULTS[name], chunk_delay=0.005, times=1)
    rc = await regcache_factory(upstream_options={"read_timeout": "1s"})
    started = time.monotonic()
    responses = await asyncio.gather(raw_get(rc.port, blob_path(digest)), raw_get(rc.port, blob_path(digest)),
                                     raw_get(rc.port, blob_path(digest), {"Range": "bytes=1000-"}))
    for response in responses:
        assert_dropped(response)
    assert responses[2].status == 206
    assert time.monotonic() - started < 5  # the stall is bounded by read_timeout (1 s)
    assert fake.count("GET", digest) == 1
    await assert_next_request_succeeds(fake, rc, data, digest, upstream_gets=2)


async def test_corrupt_blob_never_reaches_its_last_byte(fake, regcache_factory, blob):
    """Verification happens before the last byte: the client holds SIZE-1 bytes, then a reset."""
    data, digest = blob
    fake.faults[digest] = Fault(corrupt=True, times=1)
    rc = await regcache_factory()
    response = await raw_get(rc.port, blob_path(digest))
    assert_dropped(response)
    assert response.length == SIZE - 1


async def test_aiohttp_client_sees_a_payload_error_not_a_short_blob(fake, regcache_factory, blob):
    data, digest = blob
    fake.faults[digest] = Fault(truncate_at=SIZE // 3, times=1)
    rc = await regcache_factory()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{rc.port}{blob_path(digest)}") as response:
            assert response.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
    await assert_next_request_succeeds(fake, rc, data, digest, upstream_gets=2)


# -- faults before the response headers: a registry JSON error -----------------------------

# upstream status -> what the client gets (errors.to_registry_error)
STATUS_ERRORS = [
    (429, 429, "TOOMANYREQUESTS"),
    (500, 502, "UNAVAILABLE"),
    (502, 502, "UNAVAILABLE"),
    (503, 502, "UNAVAILABLE"),
]


@pytest.mark.parametrize("status,expected_status,code", [*STATUS_ERRORS, (404, 404, "BLOB_UNKNOWN")])
async def test_upstream_status_becomes_a_json_error(fake, regcache_factory, blob, status, expected_status, code):
    data, digest = blob
    # Held 0.3 s so that all three requests share the failing attempt.
    fake.faults[digest] = Fault(status=status, retry_after="17" if status == 429 else None, delay=0.3, times=1)
    rc = await regcache_factory()
    responses = await asyncio.gather(*(raw_get(rc.port, blob_path(digest)) for _ in range(3)))
    for response in responses:
        assert_json_error(response, expected_status, code)
        if status == 429:
            assert response.headers["retry-after"] == "17"  # passed on
    assert fake.count("GET", digest) == 1
    await assert_next_request_succeeds(fake, rc, data, digest, upstream_gets=2)


@pytest.mark.parametrize("status,expected_status,code", STATUS_ERRORS)
async def test_upstream_status_on_a_manifest_becomes_a_json_error(fake, regcache_factory, status,
                                                                  expected_status, code):
    image = fake.add_image("library/app", "v1", [b"layer"])
    fake.faults["v1"] = Fault(status=status, retry_after="30" if status == 429 else None, times=1)
    rc = await regcache_factory()
    response = await raw_get(rc.port, "/v2/library/app/manifests/v1", {"Accept": SCHEMA2})
    assert_json_error(response, expected_status, code)
    if status == 429:
        assert response.headers["retry-after"] == "30"
    good = await raw_get(rc.port, "/v2/library/app/manifests/v1", {"Accept": SCHEMA2}, keep_body=True)
    assert good.status == 200 and sha256(good.body) == image["manifest"]
    assert fake.count("HEAD", "/manifests/v1") == 2


async def test_upstream_silent_before_headers_is_a_timeout_error(fake, regcache_factory, blob):
    data, digest = blob
    fake.faults[digest] = Fault(delay=5, times=1)
    rc = await regcache_factory(upstream_options={"read_timeout": "1s"})
    started = time.monotonic()
    response = await raw_get(rc.port, blob_path(digest))
    assert time.monotonic() - started < 3
    assert_json_error(response, 504, "UNAVAILABLE")
    await assert_next_request_succeeds(fake, rc, data, digest, upstream_gets=2)


async def test_upstream_silent_past_fill_timeout_is_a_timeout_error(fake, regcache_factory, blob):
    """fill_timeout shorter than read_timeout: the waiting request gets a 504 JSON error too."""
    data, digest = blob
    fake.faults[digest] = Fault(delay=4, times=1)
    rc = await regcache_factory(upstream_options={"read_timeout": "10s"}, fill_timeout="1s")
    started = time.monotonic()
    response = await raw_get(rc.port, blob_path(digest))
    assert time.monotonic() - started < 3
    assert_json_error(response, 504, "UNAVAILABLE")
    await assert_next_request_succeeds(fake, rc, data, digest, upstream_gets=2)


# -- the token server ---------------------------------------------------------------------

async def test_token_server_down_then_back(fake, regcache_factory):
    image = fake.add_image("library/app", "v1", [b"layer"])
    token_server = FakeRegistry()  # serves /token only, on a port we can close
    await token_server.serve()
    port = token_server.port
    await token_server.stop()
    fake.require_auth = True
    fake.token_realm = f"http://127.0.0.1:{port}/token"
    rc = await regcache_factory()
    started = time.monotonic()
    response = await raw_get(rc.port, "/v2/library/app/manifests/v1", {"Accept": SCHEMA2})
    assert time.monotonic() - started < 1.5
    assert_json_error(response, 502, "UNAVAILABLE")
    await token_server.serve(port)
    try:
        good = await raw_get(rc.port, "/v2/library/app/manifests/v1", {"Accept": SCHEMA2}, keep_body=True)
        assert good.status == 200 and sha256(good.body) == image["manifest"]
        assert token_server.token_requests == 1
    finally:
        await token_server.stop()
    assert_store_clean(rc.root, set())


@pytest.mark.parametrize("fault,expected_status,code", [
    ("garbage", 502, "UNAVAILABLE"),
    ("json without token", 502, "UNAVAILABLE"),
    (500, 502, "UNAVAILABLE"),
    (401, 403, "DENIED"),
])
async def test_token_server_bad_answers(fake, regcache_factory, blob, fault, expected_status, code):
    data, digest = blob
    fake.require_auth = True
    if fault == "garbage":
        fake.token_body = b"<html>502 Bad Gateway</html>"
    elif fault == "json without token":
        fake.token_body = b'{"details": "try later"}'
    else:
        fake.token_fault = Fault(status=fault, times=1)
    rc = await regcache_factory()
    response = await raw_get(rc.port, blob_path(digest))
    assert_json_error(response, expected_status, code)
    fake.token_body = None
    # The failure is not cached: the next request asks the token server again. (Blob GETs:
    # the first, unauthenticated, met the 401; the next one carried the new token.)
    await assert_next_request_succeeds(fake, rc, data, digest, upstream_gets=2)
    assert fake.token_requests == 2


# -- the CDN redirect target --------------------------------------------------------------

async def test_cdn_target_error_status(fake, regcache_factory, blob):
    data, digest = blob
    fake.redirect_base = fake.base_url
    fake.faults[digest] = Fault(status=503, times=1)  # the registry redirects, the CDN fails
    rc = await regcache_factory()
    response = await raw_get(rc.port, blob_path(digest))
    assert_json_error(response, 502, "UNAVAILABLE")
    assert fake.count("GET", f"/cdn/{digest}") == 1
    await assert_next_request_succeeds(fake, rc, data, digest, upstream_gets=4)  # 2 registry + 2 CDN
    assert all("Authorization" not in r.headers for r in fake.matching("GET", "/cdn/"))


async def test_cdn_target_unreachable(fake, regcache_factory, blob):
    data, digest = blob
    dead = FakeRegistry()
    await dead.serve()
    dead_url = dead.base_url
    await dead.stop()
    fake.redirect_base = dead_url
    rc = await regcache_factory()
    started = time.monotonic()
    response = await raw_get(rc.port, blob_path(digest))
    assert time.monotonic() - started < 1.5
    assert_json_error(response, 502, "UNAVAILABLE")
    fake.redirect_base = fake.base_url
    await assert_next_request_succeeds(fake, rc, data, digest, upstream_gets=3)  # 2 registry + 1 CDN


async def test_cdn_target_drops_mid_blob(fake, regcache_factory, blob):
    data, digest = blob
    fake.redirect_base = fake.base_url
    fake.faults[digest] = Fault(truncate_at=SIZE - 100, times=1)
    rc = await regcache_factory()
    assert_dropped(await raw_get(rc.port, blob_path(digest)))
    await assert_next_request_succeeds(fake, rc, data, digest, upstream_gets=4)


# -- SIGKILL mid-fill ---------------------------------------------------------------------

def serve_subprocess(fake: FakeRegistry, workdir) -> RegcacheProcess:
    """`regcache serve` over `fake` (short upstream timeouts, no access log), not started."""
    return RegcacheProcess(workdir, upstreams=[upstream_entry(fake.base_url, connect_timeout="2s",
                                                              read_timeout="5s")],
                           log={"access_log": False})


def add_slow_blob(fake: FakeRegistry, times: int | None = None) -> tuple[bytes, str]:
    """A 24 MiB blob that `fake` sends in 256 KiB chunks 20 ms apart (about 2 s), for `times`
    requests (None: all)."""
    data = os.urandom(24 * MiB)
    digest = fake.add_blob(data)
    fake.chunk_size = 256 * 1024
    fake.faults[digest] = Fault(chunk_delay=0.02, times=times)
    return data, digest


async def start_fill(port: int, store, digest: str) -> asyncio.Task[RawResponse]:
    """A client GET of `digest`, returned once regcache holds more than 2 MiB of it in a temp file."""
    client = asyncio.create_task(raw_get(port, blob_path(digest)))
    await wait_until(lambda: any((store / "tmp" / name).stat().st_size > 2 * MiB
                                 for name in tmp_files(store)), what="fill under way")
    return client


async def test_sigkill_mid_fill_then_restart(fake, tmp_path):
    """`regcache serve` killed with SIGKILL while a blob fills: after a restart the temp file
    is gone, the partial blob was never committed or served, and the blob fills whole."""
    data, digest = add_slow_blob(fake, times=1)
    server = await serve_subprocess(fake, tmp_path).astart()
    port, store = server.port, server.storage_root / "v1"
    try:
        client = await start_fill(port, store, digest)
        await server.akill()
        cut = await client
        assert_dropped(cut)
        assert len(tmp_files(store)) == 1  # the partial download the crash left behind
        assert digest not in stored_blobs(store)
        [first] = fake.matching("GET", digest)
        await wait_until(lambda: first.finished is not None, what="upstream saw the connection go")
        assert first.outcome == "peer-gone"

        await server.astart()
        assert tmp_files(store) == []  # removed at start
        assert digest not in stored_blobs(store)
        responses = await asyncio.gather(raw_get(port, blob_path(digest)),
                                         raw_get(port, blob_path(digest), {"Range": f"bytes={MiB}-"},
                                                 keep_body=True))
        whole, part = responses
        assert whole.status == 200 and whole.complete and whole.sha256 == digest
        assert part.status == 206 and part.complete and part.body == data[MiB:]
        assert fake.count("GET", digest) == 2
        await wait_until(lambda: not tmp_files(store), what="fill committed")
        assert_store_clean(store, {digest})
    finally:
        status = await server.astop()
    assert status == 0, server.log_tail()


async def test_sigterm_mid_fill_exits_cleanly(fake, tmp_path):
    """A graceful stop while a blob fills: exit status 0, no temp file, no partial blob, and the
    client got either the whole blob or a dropped connection."""
    _, digest = add_slow_blob(fake)
    server = await serve_subprocess(fake, tmp_path).astart()
    port, store = server.port, server.storage_root / "v1"
    try:
        client = await start_fill(port, store, digest)
    finally:
        status = await server.astop(timeout=30)
    response = await client
    print("SIGTERM mid-fill: client", "complete" if response.complete else f"dropped ({response.ended_by})")
    assert status == 0, server.log_tail()
    assert tmp_files(store) == []
    if response.complete:
        assert response.sha256 == digest
        assert_store_clean(store, {digest})
    else:
        assert_dropped(response)
        assert_store_clean(store, set())
