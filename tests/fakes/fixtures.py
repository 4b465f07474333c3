"""Fixtures for tests against the in-process fake upstream.

Import them into a test module: `from tests.fakes.fixtures import fake, regcache, make_settings`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from regcache.app import create_app
from regcache.config import Settings, build_settings
from tests.fakes.registry import FakeRegistry


def make_settings(root: Path, upstream_url: str, **cache: Any) -> Settings:
    """Settings with one docker.io-like upstream at `upstream_url` and a ghcr.io alias set."""
    raw = {
        "storage": {"root": str(root)},
        "cache": {"access_flush_interval": "1s", **cache},
        "upstreams": [
            {"name": "docker.io", "url": upstream_url, "aliases": ["index.docker.io", "registry-1.docker.io"],
             "connect_timeout": "2s", "read_timeout": "2s"},
        ],
        "listeners": [{"address": "127.0.0.1", "port": 0, "default_upstream": "docker.io"}],
        "log": {"level": "debug"},
    }
    return build_settings(raw, {})


@pytest.fixture
async def fake():
    """A running fake upstream (also serving its own CDN path and token endpoint)."""
    registry = FakeRegistry()
    server = TestServer(registry.app(), host="127.0.0.1")
    await server.start_server()
    registry.base_url = str(server.make_url("")).rstrip("/")
    yield registry
    await server.close()


@pytest.fixture
async def regcache(fake, tmp_path):
    """A regcache app pointed at `fake`, with a test client. Returns the client."""
    app = create_app(make_settings(tmp_path / "data", fake.base_url))
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    yield client
    await client.close()
