"""Issue 5 acceptance for /healthz and /readyz, and /metrics on a separate port.

/readyz answers 503 when the store cannot be written (a read-only filesystem, a folder
that is gone) and stays 200 while the upstream is down: an upstream outage must not take
the cache out of its Kubernetes Service, since it still serves what it has.
"""

from __future__ import annotations

import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from regcache.app import create_app, running
from regcache.config import build_settings
from tests.support.net import LOOPBACK, free_port
from tests.support.scrape import parse


def settings_for(root: Path, upstream_url: str, **extra):
    raw = {
        "storage": {"root": str(root)},
        "upstreams": [{"name": "docker.io", "url": upstream_url, "connect_timeout": "2s", "read_timeout": "2s"}],
        "listeners": [{"address": LOOPBACK, "port": 0, "default_upstream": "docker.io"}],
        **extra,
    }
    return build_settings(raw, {})


async def serve(settings) -> TestClient:
    client = TestClient(TestServer(create_app(settings), host=LOOPBACK))
    await client.start_server()
    return client


async def readiness(client: TestClient) -> tuple[int, dict]:
    resp = await client.get("/readyz")
    return resp.status, await resp.json()


async def test_health_endpoints_are_outside_v2(hub_upstream, tmp_path):
    client = await serve(settings_for(tmp_path / "data", hub_upstream.url))
    try:
        resp = await client.get("/healthz")
        assert resp.status == 200 and (await resp.json())["status"] == "ok"
        status, body = await readiness(client)
        assert status == 200 and body["store_writable"] is True
        for path in ("/v2/healthz", "/v2/readyz"):
            assert (await client.get(path)).status == 404  # no such repository route
        assert hub_upstream.count() == 0  # neither probe talks to the upstream
    finally:
        await client.close()


async def test_ready_while_upstream_is_down_and_cached_content_still_served(hub_upstream, tmp_path):
    image = hub_upstream.image("library/hello:latest")
    client = await serve(settings_for(tmp_path / "data", hub_upstream.url))
    try:
        resp = await client.get("/v2/library/hello/manifests/latest", headers={"Accept": image.media_type})
        assert resp.status == 200
        with hub_upstream.down():
            status, _ = await readiness(client)
            assert status == 200
            assert (await client.get("/healthz")).status == 200
            resp = await client.get("/v2/library/hello/manifests/latest", headers={"Accept": image.media_type})
            assert resp.status == 200 and await resp.read() == image.manifest
            assert (await client.get("/v2/library/nothere/manifests/1")).status >= 500
            status, _ = await readiness(client)
            assert status == 200
    finally:
        await client.close()


async def test_not_ready_when_the_store_folder_is_unusable(hub_upstream, tmp_path):
    """The temp folder, where every write starts, replaced by a file: writes fail
    (ENOTDIR, as for any root), so the instance leaves the Service until it is fixed."""
    client = await serve(settings_for(tmp_path / "data", hub_upstream.url))
    tmp_dir = tmp_path / "data" / "v1" / "tmp"
    try:
        assert (await readiness(client))[0] == 200
        shutil.rmtree(tmp_dir)
        tmp_dir.write_text("not a folder")
        status, body = await readiness(client)
        assert status == 503
        assert body["store_writable"] is False
        assert (await client.get("/healthz")).status == 200  # alive, just not ready
        tmp_dir.unlink()
        tmp_dir.mkdir()
        assert (await readiness(client))[0] == 200
    finally:
        await client.close()


@contextmanager
def tmpfs(path: Path) -> Iterator[Path]:
    """A small tmpfs at `path` (needs CAP_SYS_ADMIN: root on the CI machine)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(path)], check=False,
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


async def test_not_ready_on_a_read_only_filesystem_and_ready_again_after(hub_upstream, tmp_path):
    """The real failure: the volume under the store turns read-only (EROFS)."""
    with tmpfs(tmp_path / "volume") as volume:
        client = await serve(settings_for(volume / "data", hub_upstream.url))
        try:
            assert (await readiness(client))[0] == 200
            remount(volume, "ro")
            try:
                status, body = await readiness(client)
                assert status == 503 and body["store_writable"] is False
                # Metrics keep working while not ready (they explain why).
                resp = await client.get("/metrics")
                assert resp.status == 200
                parse(await resp.text())
            finally:
                remount(volume, "rw")
            assert (await readiness(client))[0] == 200
        finally:
            await client.close()


async def test_metrics_on_a_separate_port(hub_upstream, tmp_path):
    """metrics.port: /metrics (and the probes) also on their own listener, which serves
    no registry API; the main listener keeps /metrics too."""
    main_port, metrics_port = free_port(), free_port()
    settings = build_settings({
        "storage": {"root": str(tmp_path / "data")},
        "upstreams": [{"name": "docker.io", "url": hub_upstream.url}],
        "listeners": [{"address": LOOPBACK, "port": main_port, "default_upstream": "docker.io"}],
        "metrics": {"port": metrics_port, "address": LOOPBACK},
    }, {})
    image = hub_upstream.image("library/hello:latest")
    async with running(settings):
        async with aiohttp.ClientSession() as http:
            main, side = f"http://{LOOPBACK}:{main_port}", f"http://{LOOPBACK}:{metrics_port}"
            async with http.get(f"{main}/v2/library/hello/manifests/latest",
                                headers={"Accept": image.media_type}) as resp:
                assert resp.status == 200
            async with http.get(f"{side}/metrics") as resp:
                assert resp.status == 200
                samples = parse(await resp.text())
            assert samples['regcache_cache_results_total{kind="manifest",result="miss"}'] == 1
            async with http.get(f"{side}/v2/library/hello/manifests/latest") as resp:
                assert resp.status == 404
            for path in ("/healthz", "/readyz"):
                async with http.get(f"{side}{path}") as resp:
                    assert resp.status == 200
            async with http.get(f"{main}/metrics") as resp:
                # One set of services behind both ports: the same counters.
                again = parse(await resp.text())
            assert again['regcache_cache_results_total{kind="manifest",result="miss"}'] == 1
