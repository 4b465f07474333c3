"""The Registry v2 read API as clients see it, against the in-process fake upstream."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from tests.fakes.fixtures import fake, regcache  # noqa: F401  (fixtures)
from tests.fakes.registry import sha256

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
SCHEMA2 = "application/vnd.docker.distribution.manifest.v2+json"


def stored_files(root) -> list[str]:
    v1 = root / "v1"
    return sorted(str(p.relative_to(v1)) for p in v1.rglob("*") if p.is_file()) if v1.exists() else []


async def assert_error(resp, status: int, code: str) -> dict:
    assert resp.status == status, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/json")
    body = await resp.json()
    assert body["errors"][0]["code"] == code
    return body


async def test_base_endpoint_never_challenges(regcache):
    for method in ("GET", "HEAD"):
        resp = await regcache.request(method, "/v2/")
        assert resp.status == 200
        assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        assert "WWW-Authenticate" not in resp.headers
    assert await (await regcache.get("/v2/")).json() == {}


@pytest.mark.parametrize("method", ["PUT", "POST", "PATCH", "DELETE"])
@pytest.mark.parametrize("path", [
    "/v2/library/alpine/manifests/latest",
    "/v2/library/alpine/blobs/uploads/",
    "/v2/library/alpine/blobs/sha256:" + "a" * 64,
])
async def test_write_methods_are_unsupported(regcache, fake, method, path):
    resp = await regcache.request(method, path, data=b"x")
    await assert_error(resp, 405, "UNSUPPORTED")
    assert fake.requests == []


@pytest.mark.parametrize("name", ["..", "library/..", "a/../b", "UPPER/case", "a//b", "-lead", "x%2e%2e",
                                  "a" * 256, "trailing-"])
async def test_invalid_repository_names(regcache, fake, name):
    # Sent raw: an HTTP client library would normalise "a/../b" before sending it.
    status, body = await raw_get(regcache, f"/v2/{name}/manifests/latest")
    assert status == 400, body
    assert json.loads(body)["errors"][0]["code"] == "NAME_INVALID"
    assert fake.requests == []


async def raw_get(client, path: str) -> tuple[int, bytes]:
    """GET with the path exactly as given; returns status and body."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize("digest", [
    "sha256:abc", "sha256:" + "a" * 63, "sha256:" + "a" * 65, "sha256:" + "A" * 64,
    "md5:" + "a" * 32, "sha256:" + "g" * 64, "sha256" + "a" * 64,
])
async def test_malformed_digests(regcache, fake, digest):
    kinds = ("blobs", "manifests") if ":" in digest else ("blobs",)  # without ':' it is a tag
    for kind in kinds:
        resp = await regcache.get(f"/v2/library/alpine/{kind}/{digest}")
        await assert_error(resp, 400, "DIGEST_INVALID")
    assert fake.requests == []


@pytest.mark.parametrize("tag", ["-bad", ".bad", "a" * 129, "a+b"])
async def test_invalid_tags(regcache, fake, tag):
    resp = await regcache.get(f"/v2/library/alpine/manifests/{tag}")
    await assert_error(resp, 400, "TAG_INVALID")
    assert fake.requests == []


async def test_unknown_ns_is_never_dialled(regcache, fake):
    resp = await regcache.get("/v2/org/app/manifests/1?ns=127.0.0.1:1")
    await assert_error(resp, 404, "NAME_UNKNOWN")
    resp = await regcache.get("/v2/org/app/blobs/sha256:" + "b" * 64 + "?ns=evil.example")
    await assert_error(resp, 404, "NAME_UNKNOWN")
    assert fake.requests == []


async def test_ns_alias_selects_the_upstream(regcache, fake):
    image = fake.add_image("library/alpine", "3", [b"layer"])
    for ns in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        resp = await regcache.get(f"/v2/library/alpine/manifests/3?ns={ns}")
        assert resp.status == 200
        assert resp.headers["Docker-Content-Digest"] == image["manifest"]


async def test_single_component_names_get_library_prefix(regcache, fake):
    fake.add_image("library/busybox", "1", [b"layer"])
    resp = await regcache.get("/v2/busybox/manifests/1")
    assert resp.status == 200
    assert fake.count("HEAD", "/v2/library/busybox/manifests/1") == 1


@pytest.mark.parametrize("header,status,content_range", [
    ("bytes=10-", 206, "bytes 10-99/100"),
    ("bytes=10-19", 206, "bytes 10-19/100"),
    ("bytes=90-200", 206, "bytes 90-99/100"),
    ("bytes=-5", 206, "bytes 95-99/100"),
    ("bytes=100-", 416, "bytes */100"),
    ("bytes=20-10", 416, "bytes */100"),
    ("bytes=a-b", 416, "bytes */100"),
    ("bytes=0-1,5-6", 416, "bytes */100"),
    ("items=0-1", 416, "bytes */100"),
])
async def test_blob_ranges_on_hit_and_miss(regcache, fake, header, status, content_range):
    data = bytes(range(100))
    digest = fake.add_blob(data)
    for attempt in ("miss", "hit"):
        resp = await regcache.get(f"/v2/library/x/blobs/{digest}", headers={"Range": header})
        assert resp.status == status, (attempt, await resp.text())
        assert resp.headers["Content-Range"] == content_range
        if status == 206:
            start, end = (int(v) for v in content_range.split()[1].split("/")[0].split("-"))
            assert await resp.read() == data[start:end + 1]
        else:
            assert (await resp.json())["errors"][0]["code"] == "RANGE_INVALID"
        if attempt == "miss" and status == 416:
            # the blob was filled anyway by the size lookup, and is whole
            assert await (await regcache.get(f"/v2/library/x/blobs/{digest}")).read() == data
    # one upstream fetch: the second round was served from the store
    assert fake.count("GET", f"/blobs/{digest}") == 1


async def test_manifest_headers_exact(regcache, fake):
    image = fake.add_image("library/app", "v1", [b"l1", b"l2"])
    for method in ("GET", "HEAD"):
        for ref in ("v1", image["manifest"]):
            resp = await regcache.request(method, f"/v2/library/app/manifests/{ref}",
                                          headers={"Accept": SCHEMA2})
            assert resp.status == 200
            assert resp.headers["Content-Type"] == SCHEMA2
            assert resp.headers["Docker-Content-Digest"] == image["manifest"]
            assert resp.headers["ETag"] == f'"{image["manifest"]}"'
            size = len(fake.manifests[("library/app", "v1")][0])
            assert int(resp.headers["Content-Length"]) == size


async def test_accept_lines_are_all_read(regcache, fake):
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
    digest = fake.add_manifest("library/multi", "latest", body, OCI_INDEX)
    # Four separate Accept lines, OCI index on the last one (dockerd's legacy engine).
    headers = [("Accept", SCHEMA2), ("Accept", DOCKER_LIST),
               ("Accept", "application/vnd.oci.image.manifest.v1+json"), ("Accept", OCI_INDEX)]
    resp = await regcache.get("/v2/library/multi/manifests/latest", headers=headers)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == OCI_INDEX
    assert resp.headers["Docker-Content-Digest"] == digest


async def test_client_accept_excluding_cached_type_gets_upstream_answer(regcache, fake):
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
    fake.add_manifest("library/multi", "latest", body, OCI_INDEX)
    assert (await regcache.get("/v2/library/multi/manifests/latest")).status == 200
    resp = await regcache.get("/v2/library/multi/manifests/latest", headers={"Accept": DOCKER_LIST})
    # The fake ignores Accept, like a registry holding only this type: what upstream says passes on.
    assert resp.status == 200
    assert fake.count("GET", "/manifests/latest") == 1


async def test_head_on_uncached_manifest_does_not_download(regcache, fake):
    image = fake.add_image("library/app", "v1", [b"l1"])
    resp = await regcache.head("/v2/library/app/manifests/v1")
    assert resp.status == 200
    assert resp.headers["Docker-Content-Digest"] == image["manifest"]
    assert fake.count("GET") == 0


async def test_head_on_missing_blob_asks_upstream_with_head(regcache, fake):
    digest = "sha256:" + "c" * 64
    resp = await regcache.head(f"/v2/library/app/blobs/{digest}")
    assert resp.status == 404
    assert fake.count("HEAD", digest) == 1
    assert fake.count("GET") == 0


async def test_tags_list_pagination_and_link(regcache, fake):
    for tag in ("a", "b", "c"):
        fake.add_image("library/app", tag, [tag.encode()])
    resp = await regcache.get("/v2/library/app/tags/list")
    assert resp.status == 200
    assert (await resp.json())["tags"] == ["a", "b", "c"]
    resp = await regcache.get("/v2/library/app/tags/list?n=2")
    assert (await resp.json())["tags"] == ["a", "b"]
    link = resp.headers["Link"]
    assert link == '</v2/library/app/tags/list?last=b&n=2>; rel="next"'
    resp = await regcache.get(link[1:link.index(">")])
    assert (await resp.json())["tags"] == ["c"] and "Link" not in resp.headers
    # with ns, the next page keeps it, so it goes to the same upstream
    resp = await regcache.get("/v2/library/app/tags/list?n=1&ns=docker.io")
    assert resp.headers["Link"] == '</v2/library/app/tags/list?last=a&n=1&ns=docker.io>; rel="next"'
    assert fake.requests[-1].query == "n=1"  # ns is ours: never sent upstream
    resp = await regcache.get("/v2/library/app/tags/list?n=-1")
    await assert_error(resp, 400, "PAGINATION_NUMBER_INVALID")
    resp = await regcache.get("/v2/library/app/tags/list?n=abc")
    await assert_error(resp, 400, "PAGINATION_NUMBER_INVALID")
    resp = await regcache.get("/v2/library/nothing/tags/list")
    await assert_error(resp, 404, "NAME_UNKNOWN")


async def test_referrers_fast_404_when_upstream_lacks_them(regcache, fake):
    resp = await regcache.get("/v2/library/app/referrers/sha256:" + "d" * 64)
    assert resp.status == 404
    assert (await resp.json())["errors"][0]["code"] in ("NAME_UNKNOWN", "MANIFEST_UNKNOWN")


async def test_manifest_digest_mismatch_is_not_stored(regcache, fake, tmp_path):
    body = b'{"schemaVersion":2}'
    wrong = "sha256:" + "e" * 64
    fake.manifests[("library/app", wrong)] = (body, SCHEMA2)
    resp = await regcache.get(f"/v2/library/app/manifests/{wrong}")
    assert resp.status >= 500
    assert not any(p.startswith("manifests/") for p in stored_files(tmp_path / "data"))


async def test_blob_from_cdn_redirect_never_sends_authorization(regcache, fake):
    fake.require_auth = True
    fake.redirect_base = fake.base_url
    data = os.urandom(50_000)
    digest = fake.add_blob(data)
    resp = await regcache.get(f"/v2/library/app/blobs/{digest}")
    assert resp.status == 200
    assert await resp.read() == data
    cdn = [r for r in fake.requests if r.path.startswith("/cdn/")]
    assert len(cdn) == 1 and "Authorization" not in cdn[0].headers
    assert fake.token_requests == 1
    # second pull: served from disk, no upstream traffic at all
    before = len(fake.requests)
    assert await (await regcache.get(f"/v2/library/app/blobs/{digest}")).read() == data
    assert len(fake.requests) == before
    assert sha256(data) == digest
