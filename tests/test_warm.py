"""`regcache warm`: pull images (every platform) through a running regcache, so that the
next pull of every platform is a pure cache hit: no upstream manifest or blob GET.

Real parts: the upstreams are distribution with token auth and a blob CDN, regcache runs
as `regcache serve`, warm runs as `regcache warm`, and the following pull is skopeo's.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from regcache.warm import ImageRef, parse_image
from tests.support.client_skopeo import Skopeo
from tests.support.regcache_proc import RegcacheProcess

pytestmark = pytest.mark.real_upstream


def regcache_warm(proc: RegcacheProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "regcache", "warm", "--config", str(proc.config_path), *args],
                          capture_output=True, text=True, timeout=300)


def test_parse_image_references():
    assert parse_image("alpine") == ImageRef(None, "alpine", "latest")
    assert parse_image("library/multi:3.19") == ImageRef(None, "library/multi", "3.19")
    assert parse_image("ghcr.io/org/app:v1") == ImageRef("ghcr.io", "org/app", "v1")
    assert parse_image("127.0.0.1:5000/org/app") == ImageRef("127.0.0.1:5000", "org/app", "latest")
    digest = "sha256:" + "a" * 64
    assert parse_image(f"docker.io/library/x:1@{digest}") == ImageRef("docker.io", "library/x", digest)


async def test_warm_makes_every_platform_a_pure_cache_hit(hub_upstream, ghcr_upstream, tmp_path):
    proc = RegcacheProcess(tmp_path / "regcache",
                           upstreams=[hub_upstream.config_entry(), ghcr_upstream.config_entry()],
                           listeners=["docker.io", "ghcr.io"])
    images = tmp_path / "images.txt"
    images.write_text("# the morning's images\nlibrary/multi:latest\n\nghcr.io/org/multi:latest  # via ns\n")
    with proc:
        warm = regcache_warm(proc, "-f", str(images), "library/multioci:latest")
        assert warm.returncode == 0, warm.stdout + warm.stderr
        assert warm.stdout.startswith("warm: 3 images warmed: ")
        assert "warm: [####################]" in warm.stderr  # the progress bar, full at the end
        # Warming fetched each blob once from upstream (shared layers once per run).
        for ref in ("library/multi:latest", "library/multioci:latest"):
            for platform in hub_upstream.image(ref).manifests:
                for digest in (platform.config_digest, *platform.layer_digests):
                    assert hub_upstream.blob_fetches(digest) == 1

        hub_upstream.reset_counts()
        ghcr_upstream.reset_counts()
        hub = Skopeo(tmp_path / "sk-hub", mirror=proc.host)
        ghcr = Skopeo(tmp_path / "sk-ghcr", mirror=proc.hosts[1])
        pulls = [(hub, hub_upstream, "library/multi:latest"), (hub, hub_upstream, "library/multioci:latest"),
                 (ghcr, ghcr_upstream, "org/multi:latest")]
        for i, (client, upstream, ref) in enumerate(pulls):
            result = await client.copy_to_dir(client.direct_ref(ref), tmp_path / f"out{i}", all_=True)
            assert result.digest == upstream.image(ref).digest
            assert result.content == upstream.image(ref).content_digests

    for upstream in (hub_upstream, ghcr_upstream):
        assert upstream.count("GET", "/manifests/") == 0
        assert upstream.count("GET", "/blobs/") == 0
        assert upstream.cdn_requests() == []
        assert upstream.count() == upstream.count("HEAD", "/manifests/latest")  # tag revalidation only


async def test_warm_one_platform_and_a_failure(hub_upstream, tmp_path):
    proc = RegcacheProcess(tmp_path / "regcache", upstreams=[hub_upstream.config_entry()])
    index = hub_upstream.image("library/multi:latest")
    amd64, arm64 = index.platform("linux/amd64"), index.platform("linux/arm64")
    with proc:
        warm = regcache_warm(proc, "--platform", "linux/amd64", "--url", proc.url,
                             "library/multi:latest", "library/does-not-exist:1")
    assert warm.returncode == 1
    assert "warm: 1 images warmed: 2 manifests" in warm.stdout
    assert "FAILED library/does-not-exist:1: manifest 1: HTTP 404" in warm.stdout
    store = proc.storage_root / "v1" / "blobs" / "sha256"
    own_layer = next(d for d in amd64.layer_digests if d not in arm64.layer_digests)
    arm_layer = next(d for d in arm64.layer_digests if d not in amd64.layer_digests)
    assert (store / own_layer[7:9] / own_layer[7:]).exists()
    assert not (store / arm_layer[7:9] / arm_layer[7:]).exists()
