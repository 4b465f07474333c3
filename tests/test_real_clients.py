"""Issue 3 acceptance: every real client pulls through regcache from real upstreams
(distribution 2.8 with Hub/ghcr-like token auth and CDN redirects), gets upstream's
digests, and a second pull (a fresh client with an empty store) makes no upstream blob
request.
"""

from __future__ import annotations

import pytest

from tests.support.clients import Containerd, Dockerd, Podman, Skopeo

pytestmark = [pytest.mark.clients, pytest.mark.real_upstream]


def no_blob_traffic(*upstreams) -> bool:
    return all(u.count("GET", "/blobs/") == 0 and not u.cdn_requests() and u.count("GET", "/manifests/") == 0
               for u in upstreams)


async def test_containerd_hosts_toml_both_registries_on_one_port(tmp_path, regcache_hub_ghcr,
                                                                 hub_upstream, ghcr_upstream):
    hub_ref, ghcr_ref = "docker.io/library/multi:latest", "ghcr.io/org/multi:latest"
    for attempt in ("cold", "warm"):
        hub_upstream.reset_counts()
        ghcr_upstream.reset_counts()
        async with Containerd(tmp_path / f"ctd-{attempt}", regcache_hub_ghcr.host) as ctd:
            hub = await ctd.pull(hub_ref)
            ghcr = await ctd.pull(ghcr_ref)
            assert hub.digest == hub_upstream.image("library/multi:latest").digest
            assert ghcr.digest == ghcr_upstream.image("org/multi:latest").digest
            # pulled and unpacked: the image runs
            assert "hello from regcache" in await ctd.run(hub_ref, "/bin/busybox", "echo", "hello from regcache")
        if attempt == "warm":
            assert no_blob_traffic(hub_upstream, ghcr_upstream)
            assert hub_upstream.count("HEAD", "/manifests/latest") >= 1


async def test_dockerd_registry_mirror_pulls_and_runs(tmp_path, regcache_hub_ghcr, hub_upstream):
    image = hub_upstream.image("library/multi:latest")
    for attempt in ("cold", "warm"):
        hub_upstream.reset_counts()
        async with Dockerd(tmp_path / f"dk-{attempt}", regcache_hub_ghcr.host) as docker:
            result = await docker.pull("multi:latest")
            assert result.digest == image.digest
            assert result.image_id == image.platform("linux/amd64").config_digest
            assert "hello from regcache" in await docker.run("multi:latest")
        if attempt == "warm":
            assert no_blob_traffic(hub_upstream)


async def test_podman_mirror_registries_conf(tmp_path, regcache_hub_ghcr, hub_upstream, ghcr_upstream):
    mirrors = {"docker.io": regcache_hub_ghcr.host, "ghcr.io": regcache_hub_ghcr.hosts[1]}
    for attempt in ("cold", "warm"):
        hub_upstream.reset_counts()
        ghcr_upstream.reset_counts()
        async with Podman(tmp_path / f"pm-{attempt}", mirrors) as podman:
            hub = await podman.pull("docker.io/library/layers:latest")
            ghcr = await podman.pull("ghcr.io/org/app:v1")
            assert hub.digest == hub_upstream.image("library/layers:latest").digest
            assert ghcr.digest == ghcr_upstream.image("org/app:v1").digest
        if attempt == "warm":
            assert no_blob_traffic(hub_upstream, ghcr_upstream)


async def test_skopeo_mirror_mode(tmp_path, regcache_hub_ghcr, hub_upstream):
    image = hub_upstream.image("library/multioci:latest")
    for attempt in ("cold", "warm"):
        hub_upstream.reset_counts()
        skopeo = Skopeo(tmp_path / f"sk-{attempt}", regcache_hub_ghcr.host)
        result = await skopeo.copy_to_dir("docker://docker.io/library/multioci:latest",
                                          tmp_path / f"out-{attempt}", all_=True)
        assert result.digest == image.digest
        if attempt == "warm":
            assert no_blob_traffic(hub_upstream)
