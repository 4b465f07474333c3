"""The real upstream fixture on its own: token dance, blob redirects to the CDN,
credentials for private repositories, request counting, re-tagging, stop/start, and
seeded images that real tools (skopeo) accept and that unpack into a runnable rootfs.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import io
import json
import re
import subprocess
import tarfile

import aiohttp
import pytest

from tests.support.client_proc import ClientError
from tests.support.client_skopeo import Skopeo
from tests.support.images import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST

ACCEPT_ALL = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST])


def challenge(header: str) -> dict[str, str]:
    assert header.startswith("Bearer "), header
    return dict(re.findall(r'(\w+)="([^"]*)"', header))


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def fetch_token(session: aiohttp.ClientSession, www_authenticate: str,
                      creds: tuple[str, str] | None = None) -> tuple[int, dict]:
    params = challenge(www_authenticate)
    query = {"service": params["service"]}
    if "scope" in params:
        query["scope"] = params["scope"]
    headers = basic(*creds) if creds else {}
    async with session.get(params["realm"], params=query, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def get_manifest(session, upstream, repo: str, ref: str,
                       creds: tuple[str, str] | None = None) -> aiohttp.ClientResponse:
    """GET a manifest the way a client does: try, get the challenge, fetch a token, retry."""
    url = f"{upstream.url}/v2/{repo}/manifests/{ref}"
    async with session.get(url, headers={"Accept": ACCEPT_ALL}) as first:
        assert first.status == 401
        www = first.headers["WWW-Authenticate"]
    status, body = await fetch_token(session, www, creds)
    assert status == 200, body
    resp = await session.get(url, headers={"Accept": ACCEPT_ALL,
                                           "Authorization": f"Bearer {body['token']}"})
    await resp.read()
    return resp


async def test_anonymous_pull_does_the_hub_token_dance(hub_upstream):
    seeded = hub_upstream.image("library/multi:latest")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{hub_upstream.url}/v2/") as ping:
            assert ping.status == 401
            params = challenge(ping.headers["WWW-Authenticate"])
        assert params == {"realm": hub_upstream.realm, "service": "registry.docker.io"}

        async with session.get(f"{hub_upstream.url}/v2/library/multi/manifests/latest") as r:
            assert r.status == 401
            www = r.headers["WWW-Authenticate"]
        assert challenge(www)["scope"] == "repository:library/multi:pull"
        status, token = await fetch_token(session, www)
        assert status == 200
        assert set(token) == {"token", "access_token", "expires_in", "issued_at"}
        assert token["expires_in"] == 300 and token["token"] == token["access_token"]

        auth = {"Authorization": f"Bearer {token['token']}", "Accept": ACCEPT_ALL}
        async with session.get(f"{hub_upstream.url}/v2/library/multi/manifests/latest",
                               headers=auth) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == DOCKER_LIST
            assert r.headers["Docker-Content-Digest"] == seeded.digest
            assert await r.read() == seeded.manifest
        arm64 = seeded.platform("linux/arm64")
        async with session.get(f"{hub_upstream.url}/v2/library/multi/manifests/{arm64.digest}",
                               headers=auth) as r:
            assert r.status == 200 and await r.read() == arm64.manifest

    (token_request,) = hub_upstream.token_requests()
    assert token_request.scopes == ("repository:library/multi:pull",)
    assert not token_request.credentials and token_request.user is None
    assert [(e.method, e.status) for e in hub_upstream.requests()] == [
        ("GET", 401), ("GET", 401), ("GET", 200), ("GET", 200)]
    assert hub_upstream.count("GET", "/manifests/", status=200) == 2


async def test_blob_get_redirects_to_a_cdn_that_refuses_authorization(hub_upstream):
    layers = hub_upstream.image("library/layers:latest")
    big = layers.layer_digests[2]
    token = hub_upstream.token("library/layers")
    blob_url = f"{hub_upstream.url}/v2/library/layers/blobs/{big}"
    async with aiohttp.ClientSession() as session:
        bearer = {"Authorization": f"Bearer {token}"}
        async with session.get(blob_url, headers=bearer, allow_redirects=False) as r:
            assert r.status == 307
            location = r.headers["Location"]
        assert location.startswith(hub_upstream.cdn.url + "/")
        assert location.endswith(f"/{big.split(':')[1]}/data")

        # The CDN answers like a presigned S3/R2 URL given a second auth mechanism.
        async with session.get(location, headers=bearer) as r:
            assert r.status == 400
            assert "Only one auth mechanism allowed" in await r.text()
        async with session.get(location) as r:
            assert r.status == 200
            data = await r.read()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == big
        assert len(data) == len(layers.blobs[big])
        async with session.get(location, headers={"Range": "bytes=10-19"}) as r:
            assert r.status == 206 and await r.read() == data[10:20]
        # aiohttp drops Authorization on a cross-origin redirect, so following works.
        async with session.get(blob_url, headers=bearer) as r:
            assert r.status == 200 and len(await r.read()) == len(data)

    assert [(r.method, r.status, r.authorization) for r in hub_upstream.cdn_requests()] == [
        ("GET", 400, True), ("GET", 200, False), ("GET", 206, False), ("GET", 200, False)]
    assert hub_upstream.count("GET", f"/blobs/{big}", status=307) == 2
    assert hub_upstream.blob_fetches(big) == 3


async def test_private_repository_needs_the_upstream_credentials(hub_upstream):
    seeded = hub_upstream.image("private/app:1")
    async with aiohttp.ClientSession() as session:
        # Anonymous: Hub still issues a token, without access; the registry refuses it.
        anon = await get_manifest(session, hub_upstream, "private/app", "1")
        assert anon.status == 401
        www = anon.headers["WWW-Authenticate"]
        assert 'error="insufficient_scope"' in www
        # Wrong password: the token endpoint says 401.
        status, _ = await fetch_token(session, www, ("regcache-user", "nope"))
        assert status == 401
        resp = await get_manifest(session, hub_upstream, "private/app", "1",
                                  (hub_upstream.username, hub_upstream.password))
        assert resp.status == 200 and await resp.read() == seeded.manifest

    assert [(t.basic_auth, t.user, t.status) for t in hub_upstream.token_requests()] == [
        (False, None, 200), (True, None, 401), (True, "regcache-user", 200)]


async def test_hub_unknown_repository_is_401_insufficient_scope_not_404(hub_upstream):
    async with aiohttp.ClientSession() as session:
        resp = await get_manifest(session, hub_upstream, "library/nosuchimage", "latest")
        assert resp.status == 401
        assert (await resp.json())["errors"][0]["code"] == "UNAUTHORIZED"
    assert hub_upstream.token_requests()[0].granted == ()


async def test_hub_token_endpoint_accepts_the_oauth_password_grant(hub_upstream):
    form = {"grant_type": "password", "username": hub_upstream.username,
            "password": hub_upstream.password, "service": "registry.docker.io",
            "scope": "repository:private/app:pull", "client_id": "test",
            "access_type": "offline"}
    async with aiohttp.ClientSession() as session:
        async with session.post(hub_upstream.realm, data=form) as r:
            assert r.status == 200
            body = await r.json()
        assert body["expires_in"] == 300 and body["refresh_token"]
        refresh = {"grant_type": "refresh_token", "refresh_token": body["refresh_token"],
                   "service": "registry.docker.io", "scope": "repository:private/app:pull"}
        async with session.post(hub_upstream.realm, data=refresh) as r:
            assert r.status == 200
            again = await r.json()
        async with session.get(f"{hub_upstream.url}/v2/private/app/manifests/1",
                               headers={"Authorization": f"Bearer {again['access_token']}",
                                        "Accept": DOCKER_MANIFEST}) as r:
            assert r.status == 200
    requests = hub_upstream.token_requests()
    assert [(t.method, t.credentials, t.basic_auth, t.user) for t in requests] == [
        ("POST", True, False, "regcache-user"), ("POST", True, False, "regcache-user")]


async def test_ghcr_flavor_denies_private_and_unknown_and_omits_expires_in(ghcr_upstream):
    realm, service = ghcr_upstream.realm, ghcr_upstream.service
    assert service == "ghcr.io"
    creds = (ghcr_upstream.username, ghcr_upstream.password)
    async with aiohttp.ClientSession() as session:
        for scope in ("repository:private/app:pull", "repository:org/nosuch:pull"):
            async with session.get(realm, params={"service": service, "scope": scope}) as r:
                assert r.status == 403
                assert (await r.json())["errors"][0]["code"] == "DENIED"
        public = {"service": service, "scope": "repository:org/app:pull"}
        async with session.get(realm, params=public) as r:
            assert r.status == 200 and set(await r.json()) == {"token"}
        async with session.post(realm, data={"grant_type": "password"}) as r:
            assert r.status == 405    # clients must fall back to GET with Basic auth
        resp = await get_manifest(session, ghcr_upstream, "private/app", "1", creds)
        assert resp.status == 200
        assert resp.headers["Content-Type"] == OCI_MANIFEST
        assert await resp.read() == ghcr_upstream.image("private/app:1").manifest
    assert ghcr_upstream.token_requests()[-1].basic_auth


def test_access_log_counts_each_request_since_the_reset(hub_upstream):
    token = hub_upstream.token("library/hello")
    conn = http.client.HTTPConnection("127.0.0.1", hub_upstream.port)
    headers = {"Authorization": f"Bearer {token}", "Accept": DOCKER_MANIFEST}
    for method in ("HEAD", "HEAD", "GET"):
        conn.request(method, "/v2/library/hello/manifests/latest", headers=headers)
        conn.getresponse().read()
    conn.request("GET", "/v2/library/hello/tags/list?n=10", headers=headers)
    conn.getresponse().read()
    conn.close()
    assert hub_upstream.count("HEAD", "/manifests/latest") == 2
    assert hub_upstream.count("GET", "/manifests/") == 1
    assert hub_upstream.count("GET", "/blobs/") == 0
    assert hub_upstream.requests()[-1].target == "/v2/library/hello/tags/list?n=10"
    hub_upstream.reset_counts()
    assert hub_upstream.requests() == []


async def test_retag_points_the_tag_at_a_new_digest(hub_upstream):
    ref = "library/retagged:latest"
    first = await hub_upstream.aretag(ref)
    second = await hub_upstream.aretag(ref)
    assert first.digest != second.digest
    assert hub_upstream.image(ref) is second
    token = hub_upstream.token("library/retagged")
    async with aiohttp.ClientSession() as session:
        async with session.head(f"{hub_upstream.url}/v2/library/retagged/manifests/latest",
                                headers={"Authorization": f"Bearer {token}",
                                         "Accept": DOCKER_MANIFEST}) as r:
            assert r.headers["Docker-Content-Digest"] == second.digest
        # The old manifest stays reachable by digest, as on Docker Hub.
        async with session.get(f"{hub_upstream.url}/v2/library/retagged/manifests/{first.digest}",
                               headers={"Authorization": f"Bearer {token}",
                                        "Accept": DOCKER_MANIFEST}) as r:
            assert r.status == 200


def test_delete_makes_the_tag_unknown(hub_upstream):
    ref = "library/deleteme:latest"
    image = hub_upstream.retag(ref)
    hub_upstream.delete(ref)
    assert ref not in hub_upstream.images
    conn = http.client.HTTPConnection("127.0.0.1", hub_upstream.port)
    token = hub_upstream.token("library/deleteme")
    for target in ("latest", image.digest):
        conn.request("GET", f"/v2/library/deleteme/manifests/{target}",
                     headers={"Authorization": f"Bearer {token}", "Accept": DOCKER_MANIFEST})
        resp = conn.getresponse()
        assert resp.status == 404
        assert json.loads(resp.read())["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    conn.close()


async def test_stop_and_start_keep_port_and_content(hub_upstream):
    port = hub_upstream.port
    await hub_upstream.astop()
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as session:
            await session.get(f"{hub_upstream.url}/v2/")
    await hub_upstream.astart()
    assert hub_upstream.port == port
    token = hub_upstream.token("library/hello")
    async with aiohttp.ClientSession() as session:
        async with session.head(f"{hub_upstream.url}/v2/library/hello/manifests/latest",
                                headers={"Authorization": f"Bearer {token}",
                                         "Accept": DOCKER_MANIFEST}) as r:
            digest = r.headers["Docker-Content-Digest"]
    assert digest == hub_upstream.image("library/hello:latest").digest


async def test_cdn_and_token_service_can_fail_and_are_restored(hub_upstream):
    digest = hub_upstream.image("library/hello:latest").config_digest
    bearer = {"Authorization": f"Bearer {hub_upstream.token('library/hello')}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{hub_upstream.url}/v2/library/hello/blobs/{digest}",
                               headers=bearer, allow_redirects=False) as r:
            location = r.headers["Location"]
        hub_upstream.cdn.stop()
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(location)
        hub_upstream.token_server.failure_status = 503
        async with session.get(hub_upstream.realm, params={"service": hub_upstream.service}) as r:
            assert r.status == 503
        hub_upstream.ensure_running()      # what the per-test fixture does first
        async with session.get(location) as r:
            assert r.status == 200
        async with session.get(hub_upstream.realm, params={"service": hub_upstream.service}) as r:
            assert r.status == 200


async def test_plain_upstream_has_no_auth_and_serves_blobs_itself(plain_upstream):
    layers = plain_upstream.image("library/layers:latest")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{plain_upstream.url}/v2/library/layers/blobs/"
                               f"{layers.config_digest}", allow_redirects=False) as r:
            assert r.status == 200 and await r.read() == layers.config
    assert plain_upstream.cdn is None and plain_upstream.realm is None
    assert plain_upstream.blob_fetches(layers.config_digest) == 1


# -- real tools --------------------------------------------------------------------------
# skopeo runs through the isolated harness (own /etc/containers, tmpfs over /var/lib so its
# blob-info cache never lands on the host, own HOME and auth file, dead proxies).

@pytest.mark.parametrize("ref", ["library/multi:latest", "library/multioci:latest",
                                 "library/layers:latest", "library/hello:latest"])
async def test_skopeo_reads_the_seeded_images(hub_upstream, tmp_path, ref):
    sk = Skopeo(tmp_path / "skopeo", mirror=hub_upstream.host)
    raw = await sk.inspect_raw(sk.direct_ref(ref))
    assert raw == hub_upstream.image(ref).manifest
    # Anonymous token dance, no credentials sent.
    assert hub_upstream.token_requests() and not any(
        t.credentials for t in hub_upstream.token_requests())


async def test_skopeo_uses_credentials_for_ghcr_private(ghcr_upstream, tmp_path):
    sk = Skopeo(tmp_path / "skopeo", mirror=ghcr_upstream.host)
    ref = sk.direct_ref("private/app:1")
    with pytest.raises(ClientError):
        await sk.inspect_raw(ref)
    creds = f"{ghcr_upstream.username}:{ghcr_upstream.password}"
    result = await sk.skopeo("inspect", "--raw", "--retry-times", "0", "--tls-verify=false",
                             "--creds", creds, ref)
    assert result.stdout.encode() == ghcr_upstream.image("private/app:1").manifest
    assert ghcr_upstream.token_requests()[-1].basic_auth


async def test_skopeo_copies_every_platform_through_the_cdn(hub_upstream, tmp_path):
    index = hub_upstream.image("library/multi:latest")
    sk = Skopeo(tmp_path / "skopeo", mirror=hub_upstream.host)
    await sk.copy_to_dir(sk.direct_ref("library/multi:latest"), tmp_path / "out", all_=True)
    # dir: keeps every manifest and blob byte for byte (oci: would convert the configs).
    copied = {p.name for p in (tmp_path / "out").iterdir()}
    assert {d.split(":")[1] for d in index.blobs} <= copied
    assert (tmp_path / "out/manifest.json").read_bytes() == index.manifest
    # Every blob byte came from the CDN; skopeo did not forward its bearer token there.
    assert hub_upstream.count("GET", "/blobs/", status=200) == 0
    assert hub_upstream.cdn.count("GET") == len(index.blobs)
    assert not any(r.authorization for r in hub_upstream.cdn_requests())


def test_layers_unpack_into_a_runnable_rootfs(hub_upstream, tmp_path):
    """What a runtime does: apply the layers in order and run the config's Cmd."""
    image = hub_upstream.image("library/layers:latest")
    config = json.loads(image.config)
    rootfs = tmp_path / "rootfs"
    for digest, diff_id in zip(image.layer_digests, config["rootfs"]["diff_ids"], strict=True):
        raw = gzip.decompress(image.blobs[digest])
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == diff_id
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            tar.extractall(rootfs, filter="tar")
    assert (rootfs / "data/big.bin").stat().st_size == hub_upstream.big_layer_size
    cmd = config["config"]["Cmd"]
    out = subprocess.run([str(rootfs / cmd[0].lstrip("/")), *cmd[1:]], check=True,
                         capture_output=True, text=True).stdout
    assert out == "hello from regcache\n"
