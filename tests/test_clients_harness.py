"""Each real-client harness pulls through a plain docker-registry acting as
the mirror, ends up with the digests that were pushed, and sends what that
client is known to send (recorded by a proxy between client and mirror).

These tests are about the harnesses (tests/support/client_*.py); regcache
tests use the same harnesses with regcache as the mirror. They need root
(mount namespaces) and the Debian packages in .ci/apt-packages.txt.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.support import images as ci
from tests.support.clients import (
    ClientError,
    Containerd,
    Dockerd,
    Podman,
    RecordingProxy,
    Skopeo,
)
from tests.support.realupstream import RealUpstream, start_upstream
from tests.support.seed import catalog

pytestmark = pytest.mark.clients

HELLO_OUT = "hello from regcache\n"   # what every seeded image prints when run


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> RealUpstream:
    """A plain docker-registry (no auth, no redirects) with the hub catalog
    plus the ghcr images pushed into the same registry: one port serves both
    registries, as regcache does with ?ns=."""
    with start_upstream(tmp_path_factory.mktemp("mirror"), flavor="hub",
                        auth=False, redirect=False, big_layer_size=256 * 1024) as reg:
        ghcr = catalog("ghcr")
        for ref in ("org/app:v1", "org/multi:latest"):
            reg.push(ref, ghcr[ref])
        yield reg


@pytest.fixture
async def rec(mirror: RealUpstream):
    async with RecordingProxy(mirror.url) as proxy:
        yield proxy


@pytest.fixture
def imgs(mirror: RealUpstream) -> SimpleNamespace:
    """The images the mirror holds, by short name."""
    return SimpleNamespace(
        hello=mirror.image("library/hello:latest"),        # Docker schema2, one platform
        multi=mirror.image("library/multi:latest"),        # Docker manifest list
        multioci=mirror.image("library/multioci:latest"),  # OCI index
        app=mirror.image("org/app:v1"),                    # ghcr: OCI manifest
        gmulti=mirror.image("org/multi:latest"),           # ghcr: OCI index
    )


def manifest_requests(rec: RecordingProxy):
    return [r for r in rec.requests if "/manifests/" in r.path]


# --- the recorder itself -----------------------------------------------------

async def test_recorder_passes_answers_through_and_records_accept_lines(rec, imgs):
    import aiohttp
    idx = imgs.multioci
    async with aiohttp.ClientSession() as s:
        headers = [("Accept", ci.OCI_INDEX), ("Accept", ci.OCI_MANIFEST)]
        async with s.head(f"{rec.url}/v2/library/multioci/manifests/latest?ns=docker.io",
                          headers=headers) as r:
            assert r.status == 200
            assert r.headers["Docker-Content-Digest"] == idx.digest
            assert int(r.headers["Content-Length"]) == idx.size
        layer = idx.platform("linux/amd64").layer_digests[-1]
        async with s.get(f"{rec.url}/v2/library/multioci/blobs/{layer}") as r:
            assert ci.sha256(await r.read()) == layer
    head, get = rec.requests
    assert (head.method, head.path, dict(head.query)) == (
        "HEAD", "/v2/library/multioci/manifests/latest", {"ns": "docker.io"})
    assert head.accept == (ci.OCI_INDEX, ci.OCI_MANIFEST)
    assert (get.method, get.status) == ("GET", 200)


# --- skopeo ------------------------------------------------------------------

async def test_skopeo_copy_all_to_dir_direct(rec, imgs, tmp_path):
    sk = Skopeo(tmp_path / "sk", rec.host)
    res = await sk.copy_to_dir(sk.direct_ref("library/multi:latest"), tmp_path / "out")
    assert res.digest == imgs.multi.digest
    assert res.content == imgs.multi.content_digests
    # c/image: /v2/ ping, GET (not HEAD) by tag, one Accept line per type, no ns.
    assert rec.requests[0].path == "/v2/"
    tag_req = next(r for r in rec.requests if r.path.endswith("/manifests/latest"))
    assert tag_req.method == "GET"
    assert len(tag_req.accept) > 1 and ci.DOCKER_LIST in tag_req.accept
    assert all("ns" not in r.query for r in rec.requests)


async def test_skopeo_mirror_mode_docker_io_and_ghcr(rec, imgs, tmp_path):
    sk = Skopeo(tmp_path / "sk", rec.host)
    res = await sk.copy_to_oci("docker://docker.io/library/multioci:latest",
                               tmp_path / "oci", "t")
    assert res.digest == imgs.multioci.digest  # OCI source: copied verbatim
    assert res.content == imgs.multioci.content_digests
    assert await sk.inspect_digest("docker://ghcr.io/org/app:v1") == imgs.app.digest
    # unqualified name: docker.io/library/ via registries.conf
    assert await sk.inspect_digest("docker://hello") == imgs.hello.digest
    paths = {r.path for r in rec.requests}
    assert {"/v2/library/multioci/manifests/latest", "/v2/org/app/manifests/v1",
            "/v2/library/hello/manifests/latest"} <= paths
    assert all("ns" not in r.query for r in rec.requests)


async def test_skopeo_one_mirror_port_per_registry(mirror, rec, imgs, tmp_path):
    # c/image sends no ns: against regcache each registry needs its own
    # listener, so the harness takes registry -> mirror host.
    async with RecordingProxy(mirror.url) as rec_ghcr:
        sk = Skopeo(tmp_path / "sk", {"docker.io": rec.host, "ghcr.io": rec_ghcr.host})
        assert await sk.inspect_digest("docker://ghcr.io/org/multi:latest") == imgs.gmulti.digest
        assert await sk.inspect_digest("docker://docker.io/library/multi:latest") == imgs.multi.digest
    assert "/v2/org/multi/manifests/latest" in rec_ghcr.paths()
    assert "/v2/library/multi/manifests/latest" in rec.paths()
    assert not any(p.startswith("/v2/org/") for p in rec.paths())


async def test_skopeo_single_platform_and_override_arch(rec, imgs, tmp_path):
    sk = Skopeo(tmp_path / "sk", rec.host)
    ref = sk.direct_ref("library/multioci:latest")
    amd = await sk.copy_to_dir(ref, tmp_path / "a", all_=False)
    assert amd.digest == imgs.multioci.platform("linux/amd64").digest
    arm = await sk.copy_to_dir(ref, tmp_path / "b", all_=False, override_arch="arm64")
    arm64 = imgs.multioci.platform("linux/arm64")
    assert arm.digest == arm64.digest and arm.content == arm64.content_digests
    assert await sk.list_tags(sk.direct_ref("library/multioci")) == ["latest"]


# --- containerd + ctr --------------------------------------------------------

async def test_containerd_pulls_docker_io_and_ghcr_through_one_mirror_port(rec, imgs, tmp_path):
    async with Containerd(tmp_path / "ctd", rec.host) as ctd:
        hub = await ctd.pull("docker.io/library/multi:latest")
        ghcr = await ctd.pull("ghcr.io/org/multi:latest")
        assert hub.digest == imgs.multi.digest and ghcr.digest == imgs.gmulti.digest
        hub_amd, ghcr_amd = imgs.multi.platform("linux/amd64"), imgs.gmulti.platform("linux/amd64")
        assert hub.image_id == hub_amd.config_digest
        assert ghcr.image_id == ghcr_amd.config_digest
        # The index and the amd64 image of each, not the arm64 one.
        expected = {imgs.multi.digest, imgs.gmulti.digest,
                    *hub_amd.content_digests, *ghcr_amd.content_digests}
        assert ghcr.content == expected
        assert len(await ctd.snapshots()) == 3  # unpacked: busybox + two /etc layers
    # containerd: every request carries ns=<registry of the reference>, one
    # comma-joined Accept line, HEAD by tag, no /v2/ ping.
    assert rec.requests and "/v2/" not in rec.paths()
    for r in rec.requests:
        want = "ghcr.io" if r.path.startswith("/v2/org/") else "docker.io"
        assert r.query.getall("ns") == [want], r
        assert len(r.accept) == 1 and r.accept[0].endswith("*/*"), r
    assert (rec.requests[0].method, rec.requests[0].path) == (
        "HEAD", "/v2/library/multi/manifests/latest")


async def test_containerd_runs_pulled_image(rec, imgs, tmp_path):
    async with Containerd(tmp_path / "ctd", rec.host) as ctd:
        res = await ctd.pull("docker.io/library/hello:latest")
        assert res.digest == imgs.hello.digest
        assert res.image_id == imgs.hello.config_digest
        assert res.content == imgs.hello.content_digests
        assert await ctd.run("docker.io/library/hello:latest",
                             "/bin/echo", "hi from ctr") == "hi from ctr\n"


async def test_containerd_missing_image_fails_locally(rec, tmp_path):
    async with Containerd(tmp_path / "ctd", rec.host) as ctd:
        with pytest.raises(ClientError) as err:
            await ctd.pull("docker.io/library/nope:1")
    # The mirror said 404, the fallback `server` is a closed local port.
    assert [(r.method, r.status) for r in manifest_requests(rec)] == [("HEAD", 404)]
    assert "127.0.0.1:9" in str(err.value)


# --- dockerd (legacy graphdriver engine) -------------------------------------

async def test_dockerd_pulls_through_mirror_and_runs_image(rec, imgs, tmp_path):
    async with Dockerd(tmp_path / "dockerd", rec.host) as d:
        multi = await d.pull("multi")
        assert multi.digest == imgs.multi.digest
        assert multi.image_id == imgs.multi.platform("linux/amd64").config_digest
        assert multi.repo_digests == (f"multi@{imgs.multi.digest}",)
        hello = await d.pull("docker.io/library/hello:latest")
        assert hello.digest == imgs.hello.digest
        assert hello.image_id == imgs.hello.config_digest
        assert await d.run("hello:latest") == HELLO_OUT
        assert await d.run("hello", "sh", "-c", "echo $((6*7))") == "42\n"
    # Legacy engine: GET /v2/ ping before each pull, HEAD by tag, one Accept
    # line per media type, no ns, paths with library/.
    assert [r.path for r in rec.requests if r.path == "/v2/"] == ["/v2/", "/v2/"]
    assert rec.requests[0].path == "/v2/"
    head = rec.requests[1]
    assert (head.method, head.path) == ("HEAD", "/v2/library/multi/manifests/latest")
    for r in manifest_requests(rec):
        assert len(r.accept) >= 4 and all("," not in a for a in r.accept), r
        assert {ci.DOCKER_MANIFEST, ci.DOCKER_LIST, ci.OCI_MANIFEST, ci.OCI_INDEX} <= set(r.accept)
    assert all(not r.query for r in rec.requests)


async def test_dockerd_does_not_use_mirror_for_other_registries(rec, tmp_path):
    async with Dockerd(tmp_path / "dockerd", rec.host) as d:
        res = await d.docker("pull", "ghcr.io/org/app:v1", check=False)
    assert res.returncode != 0
    assert rec.requests == []  # ghcr.io went to the (dead) proxy, never the mirror


# --- podman ------------------------------------------------------------------

async def test_podman_pulls_through_mirror_and_runs_image(rec, imgs, tmp_path):
    async with Podman(tmp_path / "pm", rec.host) as pm:
        multi = await pm.pull("docker.io/library/multioci:latest")
        assert multi.digest == imgs.multioci.digest
        assert multi.image_id == imgs.multioci.platform("linux/amd64").config_digest
        app = await pm.pull("ghcr.io/org/app:v1")
        assert app.digest == imgs.app.digest
        hello = await pm.pull("docker.io/library/hello:latest")
        assert hello.digest == imgs.hello.digest
        assert await pm.run("docker.io/library/hello:latest") == HELLO_OUT
    assert rec.requests[0].path == "/v2/"
    for r in manifest_requests(rec):
        assert r.method == "GET" and len(r.accept) > 1, r
    assert all("ns" not in r.query for r in rec.requests)
    # Only the amd64 child of the index was fetched.
    arm_only = (imgs.multioci.platform("linux/arm64").content_digests
                - imgs.multioci.platform("linux/amd64").content_digests)
    assert arm_only and not any(d in r.path for r in rec.requests for d in arm_only)
