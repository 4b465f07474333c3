"""Fixtures for tests against the in-process fake upstream.

Import them into a test module: `from tests.fakes.fixtures import fake, regcache, make_settings`.
`regcache_factory` starts regcache apps with other settings (timeouts, fill_timeout) and
gives back a `Running` with the test client, the port and the store root.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from regcache.app import create_app
from regcache.config import Settings, build_settings
from tests.fakes.registry import FakeRegistry


def make_settings(root: Path, upstream_url: str, upstream_options: dict[str, Any] | None = None,
                  **cache: Any) -> Settings:
    """Settings with one docker.io-like upstream at `upstream_url` and a ghcr.io alias set."""
    upstream = {"name": "docker.io", "url": upstream_url,
                "aliases": ["index.docker.io", "registry-1.docker.io"],
                "connect_timeout": "2s", "read_timeout": "2s", **(upstream_options or {})}
    raw = {
        "storage": {"root": str(root)},
        "cache": {"access_flush_interval": "1s", **cache},
        "upstreams": [upstream],
        "listeners": [{"address": "127.0.0.1", "port": 0, "default_upstream": "docker.io"}],
        "log": {"level": "debug"},
    }
    return build_settings(raw, {})


@pytest.fixture
async def fake():
    """A running fake upstream (also serving its own CDN path and token endpoint)."""
    registry = FakeRegistry()
    await registry.serve()
    yield registry
    await registry.stop()


@pytest.fixture
async def regcache(fake, tmp_path):
    """A regcache app pointed at `fake`, with a test client. Returns the client."""
    app = create_app(make_settings(tmp_path / "data", fake.base_url))
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    yield client
    await client.close()


@dataclass
class Running:
    """A regcache app started by `regcache_factory`."""

    client: TestClient
    root: Path  # the store's layout root, <storage.root>/v1

    @property
    def port(self) -> int:
        assert self.client.server.port is not None
        return self.client.server.port


@pytest.fixture
async def regcache_factory(fake, tmp_path):
    """`await start(upstream_options=None, **cache)`: regcache over `fake` with these settings."""
    started: list[TestClient] = []

    async def start(upstream_options: dict[str, Any] | None = None, **cache: Any) -> Running:
        root = tmp_path / f"data{len(started)}"
        app = create_app(make_settings(root, fake.base_url, upstream_options, **cache))
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        started.append(client)
        return Running(client, root / "v1")

    yield start
    for client in started:
        await client.close()
