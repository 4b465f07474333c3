"""Issue 2 acceptance: real upstreams (distribution 2.8 with Hub-like token auth and CDN
redirects), the real CLI, and skopeo as the client.

Upstream traffic is counted from the upstream registry's own access log and its CDN.
"""

from __future__ import annotations

import hashlib

import aiohttp
import pytest

from tests.support.client_skopeo import Skopeo
from tests.support.regcache_proc import RegcacheProcess

pytestmark = pytest.mark.real_upstream

ALL_IMAGES = ["library/multi:latest", "library/multioci:latest", "library/layers:latest",
              "library/hello:latest"]


@pytest.fixture
def skopeo(tmp_path, regcache_hub_ghcr):
    return Skopeo(tmp_path / "skopeo", mirror=regcache_hub_ghcr.host)


@pytest.mark.parametrize("ref", ALL_IMAGES)
async def test_skopeo_copies_every_image_with_upstream_digests(skopeo, hub_upstream, tmp_path, ref):
    image = hub_upstream.image(ref)
    result = await skopeo.copy_to_dir(skopeo.direct_ref(ref), tmp_path / "out", all_=True)
    assert result.digest == image.digest
    assert result.content == image.content_digests


async def test_skopeo_single_platform_copy(skopeo, hub_upstream, tmp_path):
    index = hub_upstream.image("library/multi:latest")
    result = await skopeo.copy_to_dir(skopeo.direct_ref("library/multi:latest"), tmp_path / "out",
                                      all_=False, override_arch="arm64")
    assert result.digest == index.platform("linux/arm64").digest


async def test_second_pull_makes_only_tag_heads(skopeo, hub_upstream, tmp_path):
    ref = "library/multi:latest"
    image = hub_upstream.image(ref)
    await skopeo.copy_to_dir(skopeo.direct_ref(ref), tmp_path / "first", all_=True)
    assert all(hub_upstream.blob_fetches(d) == 1 for m in image.manifests
               for d in (m.config_digest, *m.layer_digests))
    hub_upstream.reset_counts()
    result = await skopeo.copy_to_dir(skopeo.direct_ref(ref), tmp_path / "second", all_=True)
    assert result.content == image.content_digests
    assert hub_upstream.count("GET", "/blobs/") == 0
    assert hub_upstream.cdn_requests() == []
    assert hub_upstream.count("GET", "/manifests/") == 0
    heads = hub_upstream.count("HEAD", "/manifests/latest")
    assert heads >= 1
    assert hub_upstream.count() == heads  # nothing but tag HEADs (the token is cached)


async def test_ghcr_on_second_listener(skopeo, regcache_hub_ghcr, ghcr_upstream, tmp_path):
    ref = "org/multi:latest"
    image = ghcr_upstream.image(ref)
    ghcr_mirror = Skopeo(tmp_path / "skopeo-ghcr", mirror=regcache_hub_ghcr.hosts[1])
    result = await ghcr_mirror.copy_to_dir(ghcr_mirror.direct_ref(ref), tmp_path / "out", all_=True)
    assert result.digest == image.digest
    assert result.content == image.content_digests


async def test_ghcr_on_same_port_with_ns(regcache_hub_ghcr, ghcr_upstream, hub_upstream):
    """containerd/BuildKit style: `?ns=ghcr.io` on the Docker Hub port."""
    image = ghcr_upstream.image("org/app:v1")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{regcache_hub_ghcr.url}/v2/org/app/manifests/v1?ns=ghcr.io",
                            headers={"Accept": image.media_type}) as resp:
            assert resp.status == 200
            body = await resp.read()
        assert "sha256:" + hashlib.sha256(body).hexdigest() == image.digest
        for digest in (image.config_digest, *image.layer_digests):
            async with http.get(f"{regcache_hub_ghcr.url}/v2/org/app/blobs/{digest}?ns=ghcr.io") as resp:
                assert resp.status == 200
                assert "sha256:" + hashlib.sha256(await resp.read()).hexdigest() == digest
    assert hub_upstream.count() == 0


async def test_retag_then_upstream_down(skopeo, hub_upstream, tmp_path):
    ref = "library/retagged:latest"
    first = await hub_upstream.aretag(ref)
    assert await skopeo.inspect_digest(skopeo.direct_ref(ref)) == first.digest
    second = await hub_upstream.aretag(ref)
    assert second.digest != first.digest
    pulled = await skopeo.copy_to_dir(skopeo.direct_ref(ref), tmp_path / "online", all_=True)
    assert pulled.digest == second.digest
    with hub_upstream.down():
        result = await skopeo.copy_to_dir(skopeo.direct_ref(ref), tmp_path / "offline", all_=True)
        assert result.digest == second.digest
        assert result.content == second.content_digests


async def test_credentials_reach_private_repos(tmp_path, hub_upstream):
    with RegcacheProcess(tmp_path / "rc", upstreams=[hub_upstream.config_entry(credentials=True)]) as rc:
        image = hub_upstream.image("private/app:1")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{rc.url}/v2/private/app/manifests/1",
                                headers={"Accept": image.media_type}) as resp:
                assert resp.status == 200
                manifest = await resp.json()
            layer = manifest["layers"][0]["digest"]
            async with http.get(f"{rc.url}/v2/private/app/blobs/{layer}") as resp:
                assert resp.status == 200
                assert "sha256:" + hashlib.sha256(await resp.read()).hexdigest() == layer
        assert any(t.basic_auth for t in hub_upstream.token_requests())
        cdn = hub_upstream.cdn_requests()
        assert cdn and not any(r.authorization for r in cdn)


async def test_private_repo_without_credentials_is_an_error_not_a_challenge(regcache_hub_ghcr):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{regcache_hub_ghcr.url}/v2/private/app/manifests/1") as resp:
            assert resp.status in (403, 404)
            assert "WWW-Authenticate" not in resp.headers
            assert (await resp.json())["errors"][0]["code"] in ("DENIED", "MANIFEST_UNKNOWN", "NAME_UNKNOWN")


async def test_starts_and_serves_cache_without_upstream(tmp_path, hub_upstream):
    """registry:2 cannot start without its upstream; regcache serves what it has."""
    rc = RegcacheProcess(tmp_path / "rc", upstreams=[hub_upstream.config_entry()])
    with rc:
        skopeo = Skopeo(tmp_path / "sk", mirror=rc.host)
        await skopeo.copy_to_dir(skopeo.direct_ref("library/hello:latest"), tmp_path / "a", all_=True)
    with hub_upstream.down():
        with rc:
            skopeo = Skopeo(tmp_path / "sk2", mirror=rc.host)
            result = await skopeo.copy_to_dir(skopeo.direct_ref("library/hello:latest"), tmp_path / "b",
                                              all_=True)
            assert result.digest == hub_upstream.image("library/hello:latest").digest

