"""Upstream authentication: challenge parsing, realm checks and a token cache.

Policy (wire-protocol.md 5.1, 5.4; style.md C5):
- Tokens are cached per (upstream, scope) until `issued_at + expires_in` minus a margin;
  `expires_in` defaults to 60 s when absent (token spec). Concurrent needs for one scope
  make one token request (single flight).
- The scope is always computed from the request (`repository:<name>:pull`), never taken
  from the `/v2/` challenge: ghcr.io echoes a placeholder scope there.
- Credentials are sent only to a realm on the upstream's own host or registrable domain
  (distribution's `realmAllowed`); another realm gets an anonymous token request.
"""

from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass
from typing import Awaitable, Callable
from urllib.parse import urlsplit

from regcache.singleflight import SingleFlight

_PARAM_RE = re.compile(r'\s*([a-zA-Z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')
MIN_LIFETIME = 60.0


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # "bearer" or "basic"
    realm: str = ""
    service: str = ""


def parse_challenge(header: str) -> Challenge | None:
    """Parse the first challenge of a `WWW-Authenticate` header."""
    scheme, _, rest = header.strip().partition(" ")
    scheme = scheme.lower()
    if scheme not in ("bearer", "basic"):
        return None
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
              for m in _PARAM_RE.finditer(rest)}
    return Challenge(scheme, params.get("realm", ""), params.get("service", ""))


def registrable_domain(host: str) -> str:
    """Last two labels of a host name (good enough for docker.io, ghcr.io, github.com)."""
    return ".".join(host.lower().rstrip(".").split(".")[-2:])


def realm_allowed(upstream_url: str, realm: str) -> bool:
    """May credentials for `upstream_url` be sent to the token `realm`?"""
    up, rl = urlsplit(upstream_url), urlsplit(realm)
    if rl.scheme not in ("http", "https") or not rl.hostname or not up.hostname:
        return False
    if rl.hostname == up.hostname:
        return True
    for host in (rl.hostname, up.hostname):
        try:
            ipaddress.ip_address(host)
            return False  # IP literals must match exactly
        except ValueError:
            pass
    if up.hostname == "localhost" or rl.hostname == "localhost":
        return False
    return registrable_domain(rl.hostname) == registrable_domain(up.hostname)


@dataclass(frozen=True, slots=True)
class Token:
    value: str
    expires_at: float


TokenFetcher = Callable[[str], Awaitable[Token]]


class TokenCache:
    """Bearer tokens of one upstream, by scope, with single-flight refresh."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._tokens: dict[str, Token] = {}
        self._flight: SingleFlight[str, Token] = SingleFlight()
        self._clock = clock

    def cached(self, scope: str) -> str | None:
        token = self._tokens.get(scope)
        if token and token.expires_at > self._clock():
            return token.value
        return None

    def invalidate(self, scope: str, rejected: str | None = None) -> None:
        """Forget the token of `scope`; with `rejected`, only if that is still the cached one.

        A request that sent an old token (or none) and got 401 must not throw away the
        fresh token another request fetched meanwhile: that would cost a token request each.
        """
        token = self._tokens.get(scope)
        if token is not None and (rejected is None or token.value == rejected):
            del self._tokens[scope]

    async def get(self, scope: str, fetch: TokenFetcher) -> str:
        value = self.cached(scope)
        if value is not None:
            return value
        token = await self._flight.do(scope, lambda: fetch(scope))
        self._tokens[scope] = token
        return token.value

    def lifetime_to_expiry(self, expires_in: object) -> float:
        """Expiry on our clock, with a margin so a token never expires in flight."""
        try:
            lifetime = float(expires_in)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            lifetime = MIN_LIFETIME
        lifetime = max(lifetime, MIN_LIFETIME)
        return self._clock() + lifetime - min(30.0, lifetime * 0.1)
