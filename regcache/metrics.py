"""Prometheus metrics. Labels stay bounded: never a repository, tag or digest.

Every labelled series is created at 0 when `Metrics` is built, so dashboards and alerts
see it before the first event.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

ROUTES = ("manifest", "blob", "tags", "referrers", "base", "other")
METHODS = ("GET", "HEAD", "OTHER")
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx")
CACHE_RESULTS = {
    "manifest": ("hit", "miss", "stale", "error"),
    "blob": ("hit", "miss", "joined"),
    "fill": ("committed", "failed", "uncached"),
}


class Metrics:
    """All of regcache's series, in a registry passed in (one per app in tests)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry, upstreams: tuple[str, ...]) -> None:
        self.registry = registry
        self.requests = Counter("regcache_http_requests", "Requests served, by route kind, method and status class",
                                ["route", "method", "status_class"], registry=registry)
        self.request_seconds = Histogram("regcache_http_request_duration_seconds",
                                         "Time to answer a request (to the end of the body)",
                                         ["route"], registry=registry)
        self.cache_results = Counter("regcache_cache_results", "Cache outcomes by object kind",
                                     ["kind", "result"], registry=registry)
        self.upstream_requests = Counter("regcache_upstream_requests", "Requests sent upstream",
                                         ["upstream", "method", "kind", "status"], registry=registry)
        self.upstream_seconds = Histogram("regcache_upstream_request_duration_seconds",
                                          "Upstream response time (to headers)", ["upstream", "kind"],
                                          registry=registry)
        for route in ROUTES:
            self.request_seconds.labels(route)
            for method in METHODS:
                for status_class in STATUS_CLASSES:
                    self.requests.labels(route, method, status_class)
        for kind, results in CACHE_RESULTS.items():
            for result in results:
                self.cache_results.labels(kind, result)
        for upstream in upstreams:
            for kind in ("manifest", "blob", "token", "tags", "referrers"):
                self.upstream_seconds.labels(upstream, kind)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in ("GET", "HEAD") else "OTHER"
        self.requests.labels(route, method, f"{status // 100}xx").inc()
        self.request_seconds.labels(route).observe(seconds)

    def observe_cache(self, kind: str, result: str) -> None:
        self.cache_results.labels(kind, result).inc()

    def observe_upstream(self, upstream: str, method: str, status: int | None, seconds: float, kind: str) -> None:
        self.upstream_requests.labels(upstream, method, kind, str(status) if status else "error").inc()
        self.upstream_seconds.labels(upstream, kind).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
