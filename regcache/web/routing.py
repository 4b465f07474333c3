"""Which upstream and which resource a request means, decided in one place.

- `?ns=<host>` (containerd, BuildKit, Docker 29) names an upstream by name or alias; an
  `ns` naming no configured upstream is NAME_UNKNOWN and is never dialled: `ns` is a lookup
  key, not a host.
- Without `ns`, the listener's default upstream (dockerd's legacy engine never sends it).
- Docker Hub single-component names get `library/` (wire-protocol.md 6).
- The path is parsed from the raw request path, before any dot-segment normalisation, so
  `..` and percent-escapes in a name are rejected, not silently resolved.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from regcache.config import Settings, UpstreamConfig
from regcache.errors import RegistryError
from regcache.reference import normalize_docker_hub_name, validate_name

_RESOURCE_RE = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>manifests|blobs|tags|referrers)/(?P<ref>[^/]*)$")


@dataclass(frozen=True, slots=True)
class Target:
    upstream: UpstreamConfig
    repo: str
    kind: str  # manifests, blobs, tags, referrers
    reference: str


class Router:
    """Maps (raw path, ns) to a Target for one listener."""

    def __init__(self, settings: Settings, default_upstream: str) -> None:
        self._by_host = {host.lower(): u for u in settings.upstreams for host in u.host_names}
        self._default = settings.upstream(default_upstream)

    def upstream_for(self, ns: str | None) -> UpstreamConfig:
        if ns is None or ns == "":
            return self._default
        upstream = self._by_host.get(ns.lower())
        if upstream is None:
            raise RegistryError("NAME_UNKNOWN", "no upstream is configured for this namespace",
                                detail={"ns": ns[:255]})
        return upstream

    def resolve(self, raw_path: str, ns: str | None) -> Target:
        """Parse `/v2/<name>/<kind>/<reference>`; raise a registry error for bad input."""
        path = raw_path.split("?", 1)[0]
        match = _RESOURCE_RE.match(path)
        if not match:
            raise RegistryError("NAME_UNKNOWN", "unknown API path", detail={"path": path[:300]})
        name = validate_name(match.group("name"))  # rejects "..", "%2e", uppercase, ...
        kind, reference = match.group("kind"), match.group("ref")
        if kind == "tags" and reference != "list":
            raise RegistryError("NAME_UNKNOWN", "unknown API path", detail={"path": path[:300]})
        upstream = self.upstream_for(ns)
        if upstream.library_prefix:
            name = normalize_docker_hub_name(name)
        return Target(upstream, name, kind, reference)
