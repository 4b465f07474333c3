"""Upstream auth rules: challenge parsing, where credentials may go, token lifetimes."""

from __future__ import annotations

import pytest

from regcache.upstream.auth import TokenCache, parse_challenge, realm_allowed
from tests.fakes.fixtures import fake, make_settings  # noqa: F401  (fixture)


def test_parse_bearer_challenge_with_quoted_commas():
    challenge = parse_challenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                                'scope="repository:library/alpine:pull,push"')
    assert challenge is not None
    assert (challenge.scheme, challenge.realm, challenge.service) == (
        "bearer", "https://auth.docker.io/token", "registry.docker.io")


def test_unknown_scheme_is_no_challenge():
    assert parse_challenge("Negotiate abc") is None


@pytest.mark.parametrize("upstream,realm,allowed", [
    ("https://registry-1.docker.io", "https://auth.docker.io/token", True),   # same registrable domain
    ("https://ghcr.io", "https://ghcr.io/token", True),                       # same host
    ("https://registry-1.docker.io", "https://evil.example/token", False),
    ("https://registry-1.docker.io", "https://docker.io.evil.example/token", False),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5001/token", True),           # same IP literal
    ("http://127.0.0.1:5000", "http://127.0.0.2/token", False),
    ("https://ghcr.io", "ftp://ghcr.io/token", False),
    ("https://localhost:5000", "https://other.localhost/token", False),
])
def test_realm_allowed(upstream, realm, allowed):
    assert realm_allowed(upstream, realm) is allowed


def test_token_lifetime_defaults_to_60s_with_margin():
    now = [1000.0]
    cache = TokenCache(clock=lambda: now[0])
    assert cache.lifetime_to_expiry(None) == pytest.approx(1000 + 60 - 6)
    assert cache.lifetime_to_expiry(300) == pytest.approx(1000 + 300 - 30)
    assert cache.lifetime_to_expiry(5) == pytest.approx(1000 + 60 - 6)  # never below the spec's 60 s


async def test_credentials_not_sent_to_a_foreign_realm(fake, tmp_path, aiohttp_client):
    """A realm on another host gets an anonymous token request: our password stays home."""
    from regcache.app import create_app
    from regcache.config import build_settings

    fake.require_auth = True
    # Another host name for the same loopback server: realm_allowed says no (IP vs name).
    fake.token_realm = fake.base_url.replace("127.0.0.1", "localhost") + "/token"
    fake.add_image("library/app", "1", [b"layer"])
    (tmp_path / "pw").write_text("hunter2")
    raw = {"storage": {"root": str(tmp_path / "data")},
           "upstreams": [{"name": "docker.io", "url": fake.base_url, "username": "bot",
                          "password_file": str(tmp_path / "pw")}],
           "listeners": [{"address": "127.0.0.1", "port": 0}]}
    client = await aiohttp_client(create_app(build_settings(raw, {})))
    resp = await client.get("/v2/library/app/manifests/1")
    assert resp.status == 200
    token_requests = [r for r in fake.requests if r.path == "/token"]
    assert token_requests, "the token realm was asked"
    assert all("Authorization" not in r.headers for r in token_requests)
