"""Shared fixtures. The logic lives in tests/support; this file only wires it to pytest.

- hub_upstream / ghcr_upstream: the real upstream registries (distribution 2.8 with
  Hub-like / ghcr-like token auth and blob redirects to a CDN), started once per
  session and seeded (see tests/support/seed.py). Each test gets them running, with
  request counters reset at its start.
- plain_upstream: the hub catalog on a registry without auth and without redirects
  (benchmarks, and the `registry:2` proxy-mode baseline).
- regcache_hub_ghcr: a running `regcache serve` subprocess with Docker Hub (hub_upstream)
  as the default of its first port and ghcr.io (ghcr_upstream) of its second.
"""

from __future__ import annotations

import pytest

from tests.support.realupstream import start_upstream
from tests.support.regcache_proc import RegcacheProcess

_UPSTREAM_FIXTURES = {"hub_upstream", "ghcr_upstream", "plain_upstream"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _UPSTREAM_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real_upstream)


@pytest.fixture(scope="session")
def hub_upstream_session(tmp_path_factory):
    with start_upstream(tmp_path_factory.mktemp("hub-upstream"), flavor="hub") as upstream:
        yield upstream


@pytest.fixture(scope="session")
def ghcr_upstream_session(tmp_path_factory):
    with start_upstream(tmp_path_factory.mktemp("ghcr-upstream"), flavor="ghcr") as upstream:
        yield upstream


@pytest.fixture(scope="session")
def plain_upstream_session(tmp_path_factory):
    with start_upstream(tmp_path_factory.mktemp("plain-upstream"), flavor="hub",
                        auth=False, redirect=False) as upstream:
        yield upstream


def _fresh(upstream):
    # A previous test may have stopped the registry or the CDN; start from a known state.
    upstream.ensure_running()
    upstream.reset_counts()
    return upstream


@pytest.fixture
def hub_upstream(hub_upstream_session):
    return _fresh(hub_upstream_session)


@pytest.fixture
def ghcr_upstream(ghcr_upstream_session):
    return _fresh(ghcr_upstream_session)


@pytest.fixture
def plain_upstream(plain_upstream_session):
    return _fresh(plain_upstream_session)


@pytest.fixture
def regcache_hub_ghcr(tmp_path, hub_upstream, ghcr_upstream):
    proc = RegcacheProcess(tmp_path / "regcache",
                           upstreams=[hub_upstream.config_entry(), ghcr_upstream.config_entry()],
                           listeners=["docker.io", "ghcr.io"])
    with proc:
        yield proc
