"""Test support: a real upstream registry for regcache's integration tests.

    from tests.support import start_upstream          # or the pytest fixtures in conftest.py

    def test_second_pull_is_cached(hub_upstream):     # hub flavor, counts reset per test
        img = hub_upstream.image("library/multi:latest")        # Index (manifest list)
        amd64 = img.platform("linux/amd64")                     # Image
        amd64.digest, amd64.config_digest, amd64.layer_digests  # what clients must get
        ... pull through regcache (upstream config: hub_upstream.config_entry()) ...
        hub_upstream.reset_counts()
        ... pull again ...
        assert hub_upstream.count("GET", "/blobs/") == 0
        assert hub_upstream.count("GET", "/manifests/") == 0
        assert hub_upstream.count("HEAD", "/manifests/latest") == 1
        assert hub_upstream.cdn.count("GET") == 0
        assert not any(t.basic_auth for t in hub_upstream.token_requests())

Modules: realupstream (composition, counting, seeding API), registryproc (the
docker-registry process and its access log), tokenserver/tokensign (Hub/ghcr-like
token auth), cdn (blob redirect target), images/seed (generated images), pushclient,
threadserver, net.
"""

from .images import Image, Index
from .realupstream import RealUpstream, start_upstream

__all__ = ["Image", "Index", "RealUpstream", "start_upstream"]
