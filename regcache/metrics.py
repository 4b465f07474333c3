"""Prometheus metrics: every series regcache exports, defined once (docs/metrics.md).

Policy:
- Labels stay bounded: route kind, method, status class, cache result, configured upstream
  name. Never a repository, tag or digest (unbounded cardinality).
- Every series exists from the start: counters at 0, so dashboards and alerts see a zero
  line instead of "no data" (distribution's `initPrometheusMetrics` does the same). The
  rate-limit gauges start at NaN instead: "unknown" must not read as "no pulls left".
- Gauges that describe state (fills in flight, store size, disk free) are set by
  collectors that `collect()` runs just before each scrape, on the event loop.
- Values outside a label's known set are folded into "other", so no caller can grow the
  label space by accident.
"""

from __future__ import annotations

import math
import time
from typing import Awaitable, Callable, Mapping, Protocol, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    exposition,
    generate_latest,
)

from regcache import __version__

ROUTES = ("manifest", "blob", "tags", "referrers", "base", "other")
METHODS = ("GET", "HEAD", "OTHER")
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx")
# Outcome of each manifest or blob request (one per request). See docs/metrics.md.
CACHE_RESULTS = {
    "manifest": ("hit", "miss", "stale", "error"),
    "blob": ("hit", "miss", "joined"),
}
SERVED_RESULTS = {"manifest": ("hit", "miss", "stale"), "blob": ("hit", "miss", "joined")}
REVALIDATION_RESULTS = ("unchanged", "changed", "failed")
FILL_RESULTS = ("committed", "failed", "uncached")
# (kind, method) pairs regcache sends upstream; statuses folded to a bounded set that
# still separates the codes operators act on (auth, not found, rate limit).
UPSTREAM_REQUESTS = (("manifest", "GET"), ("manifest", "HEAD"), ("blob", "GET"), ("blob", "HEAD"),
                     ("token", "GET"), ("tags", "GET"), ("referrers", "GET"))
UPSTREAM_KINDS = ("manifest", "blob", "token", "tags", "referrers")
UPSTREAM_STATUSES = ("2xx", "3xx", "401", "404", "429", "4xx", "5xx", "error")
STORE_KINDS = ("blob", "manifest", "tag", "temp", "quarantine")
# gc.py's vocabulary: `Removed.kind` and `Removed.reason`
EVICTION_KINDS = ("blob", "manifest", "tag", "temp")
EVICTION_REASONS = ("expired", "orphaned", "evicted", "stale")
GC_RESULTS = ("ok", "failed", "skipped")

# Whole-request time: small manifests take milliseconds, blobs up to minutes.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0, 120.0, 300.0)
UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Collector = Callable[["Metrics"], Awaitable[None]]


class RemovedLike(Protocol):
    @property
    def kind(self) -> str: ...
    @property
    def bytes(self) -> int: ...
    @property
    def reason(self) -> str: ...


class GcReportLike(Protocol):
    """What `observe_gc` reads from gc.GcReport."""

    @property
    def dry_run(self) -> bool: ...
    @property
    def ran(self) -> bool: ...
    @property
    def duration(self) -> float: ...
    @property
    def items(self) -> Sequence[RemovedLike]: ...
    @property
    def errors(self) -> Sequence[str]: ...


def parse_ratelimit(value: str | None) -> int | None:
    """Docker Hub's `ratelimit-remaining: 20;w=21600` (count;window) -> 20."""
    if not value:
        return None
    head = value.split(";", 1)[0].strip()
    return int(head) if head.isdigit() else None


def status_label(status: int | None) -> str:
    """An upstream status folded into UPSTREAM_STATUSES (None: no answer at all)."""
    if status is None:
        return "error"
    if str(status) in UPSTREAM_STATUSES:
        return str(status)
    return f"{status // 100}xx" if 200 <= status < 600 else "error"


def _pick(value: str, allowed: tuple[str, ...]) -> str:
    return value if value in allowed else "other"


class Metrics:
    """All of regcache's series, in a registry passed in (one per app in tests)."""

    # The classic text format 0.0.4, which every Prometheus (2.x and 3.x) reads; the names
    # are plain ASCII, so prometheus_client's output is the same in both versions.
    content_type = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4", exposition.CONTENT_TYPE_LATEST)

    def __init__(self, registry: CollectorRegistry, upstreams: tuple[str, ...],
                 store_max_bytes: int = 0) -> None:
        # No `*_created` series: they would double the series count for no dashboard use.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry
        self.upstreams = upstreams
        self._collectors: list[Collector] = []
        self.gc_sweeps = 0  # sweeps seen; the store-totals collector rescans when it moves
        r = registry
        self.build_info = Gauge("regcache_build_info", "Always 1; the version as a label", ["version"], registry=r)
        self.build_info.labels(__version__).set(1)
        # -- client side ------------------------------------------------------------------
        self.requests = Counter("regcache_http_requests", "Requests answered, by route kind, method and status class",
                                ["route", "method", "status_class"], registry=r)
        self.request_seconds = Histogram("regcache_http_request_duration_seconds",
                                         "Time to answer a request, to the end of the body",
                                         ["route"], buckets=REQUEST_BUCKETS, registry=r)
        self.cache_results = Counter("regcache_cache_results", "Outcome of each manifest or blob request",
                                     ["kind", "result"], registry=r)
        self.revalidations = Counter("regcache_tag_revalidations",
                                     "Tag requests with a cached tag, by what the upstream HEAD said",
                                     ["result"], registry=r)
        self.fills = Counter("regcache_blob_fills", "Blob downloads from upstream, by how they ended",
                             ["result"], registry=r)
        self.served_bytes = Counter("regcache_served_bytes", "Body bytes sent to clients, by cache result",
                                    ["kind", "result"], registry=r)
        # -- upstream side ----------------------------------------------------------------
        self.upstream_requests = Counter("regcache_upstream_requests", "Requests sent to upstream registries",
                                         ["upstream", "kind", "method", "status"], registry=r)
        self.upstream_seconds = Histogram("regcache_upstream_request_duration_seconds",
                                          "Upstream response time, to the response headers",
                                          ["upstream", "kind"], buckets=UPSTREAM_BUCKETS, registry=r)
        self.manifest_gets = Counter("regcache_upstream_manifest_gets",
                                     "Manifest GETs sent upstream (what Docker Hub counts as pulls; HEADs are free)",
                                     ["upstream"], registry=r)
        self.upstream_bytes = Counter("regcache_upstream_received_bytes",
                                      "Manifest and blob body bytes received from upstream",
                                      ["upstream", "kind"], registry=r)
        self.ratelimit_remaining = Gauge("regcache_upstream_ratelimit_remaining",
                                         "Last ratelimit-remaining header seen (NaN until one is seen)",
                                         ["upstream"], registry=r)
        self.ratelimit_limit = Gauge("regcache_upstream_ratelimit_limit",
                                     "Last ratelimit-limit header seen (NaN until one is seen)",
                                     ["upstream"], registry=r)
        # -- state, set at scrape time --------------------------------------------------
        self.fills_in_flight = Gauge("regcache_fills_in_flight", "Blob downloads running now", registry=r)
        self.fill_clients = Gauge("regcache_fill_clients", "Clients streaming from a running download",
                                  registry=r)
        self.store_bytes = Gauge("regcache_store_bytes", "Bytes stored, by kind (from a cached scan)",
                                 ["kind"], registry=r)
        self.store_objects = Gauge("regcache_store_objects", "Files stored, by kind (from a cached scan)",
                                   ["kind"], registry=r)
        self.store_scan_time = Gauge("regcache_store_scan_timestamp_seconds",
                                     "When the store totals were computed (0: not yet)", registry=r)
        self.store_max_bytes = Gauge("regcache_store_max_bytes", "Configured cache.max_size (0: no cap)",
                                     registry=r)
        self.store_max_bytes.set(store_max_bytes)
        self.disk_free = Gauge("regcache_disk_free_bytes", "Free bytes on the store's filesystem", registry=r)
        self.disk_size = Gauge("regcache_disk_size_bytes", "Size of the store's filesystem", registry=r)
        # -- gc -------------------------------------------------------------------------
        self.evictions = Counter("regcache_evictions", "Objects removed from the store by gc",
                                 ["kind", "reason"], registry=r)
        self.evicted_bytes = Counter("regcache_evicted_bytes", "Bytes freed by gc", ["kind", "reason"], registry=r)
        self.gc_runs = Counter("regcache_gc_runs", "gc sweeps run by this process (not by a CronJob)",
                               ["result"], registry=r)
        self.gc_last_run = Gauge("regcache_gc_last_run_timestamp_seconds", "End of the last gc sweep (0: none)",
                                 registry=r)
        self.gc_last_seconds = Gauge("regcache_gc_last_duration_seconds", "Duration of the last gc sweep",
                                     registry=r)
        self._seed()

    def _seed(self) -> None:
        for route in ROUTES:
            self.request_seconds.labels(route)
            for method in METHODS:
                for status_class in STATUS_CLASSES:
                    self.requests.labels(route, method, status_class)
        for kind, results in CACHE_RESULTS.items():
            for result in results:
                self.cache_results.labels(kind, result)
        for kind, results in SERVED_RESULTS.items():
            for result in results:
                self.served_bytes.labels(kind, result)
        for result in REVALIDATION_RESULTS:
            self.revalidations.labels(result)
        for result in FILL_RESULTS:
            self.fills.labels(result)
        for upstream in self.upstreams:
            for kind, method in UPSTREAM_REQUESTS:
                for status in UPSTREAM_STATUSES:
                    self.upstream_requests.labels(upstream, kind, method, status)
            for kind in UPSTREAM_KINDS:
                self.upstream_seconds.labels(upstream, kind)
            for kind in ("manifest", "blob"):
                self.upstream_bytes.labels(upstream, kind)
            self.manifest_gets.labels(upstream)
            self.ratelimit_remaining.labels(upstream).set(math.nan)
            self.ratelimit_limit.labels(upstream).set(math.nan)
        for kind in STORE_KINDS:
            self.store_bytes.labels(kind)
            self.store_objects.labels(kind)
        for kind in EVICTION_KINDS:
            for reason in EVICTION_REASONS:
                self.evictions.labels(kind, reason)
                self.evicted_bytes.labels(kind, reason)
        for result in GC_RESULTS:
            self.gc_runs.labels(result)

    # -- the web layer ------------------------------------------------------------------
    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        route = _pick(route, ROUTES)
        method = method if method in ("GET", "HEAD") else "OTHER"
        status_class = f"{status // 100}xx" if 200 <= status < 600 else "5xx"
        self.requests.labels(route, method, status_class).inc()
        self.request_seconds.labels(route).observe(seconds)

    def observe_served(self, route: str, cache_result: str | None, size: int) -> None:
        """Body bytes of one manifest or blob response, by its cache result (HIT, MISS...)."""
        results = SERVED_RESULTS.get(route)
        result = (cache_result or "").lower()
        if results is None or size <= 0:
            return
        if result == "pass":  # a pass-through manifest came from upstream: a miss
            result = "miss"
        if result in results:
            self.served_bytes.labels(route, result).inc(size)

    # -- the cache (PullThroughCache's observer) -----------------------------------------
    def observe_cache(self, kind: str, result: str) -> None:
        """One outcome from the cache: ("manifest"|"blob", result), ("revalidation", result)
        or ("fill", result)."""
        if kind == "revalidation":
            self.revalidations.labels(_pick(result, REVALIDATION_RESULTS)).inc()
        elif kind == "fill":
            self.fills.labels(_pick(result, FILL_RESULTS)).inc()
        else:
            kind = _pick(kind, tuple(CACHE_RESULTS))
            self.cache_results.labels(kind, _pick(result, CACHE_RESULTS.get(kind, ()))).inc()

    # -- the upstream client (UpstreamClient's observers) -------------------------------
    def observe_upstream(self, upstream: str, method: str, status: int | None, seconds: float, kind: str,
                         headers: Mapping[str, str] | None = None) -> None:
        """One upstream request answered (or failed without an answer: status None)."""
        upstream = _pick(upstream, self.upstreams)
        kind = _pick(kind, UPSTREAM_KINDS)
        self.upstream_requests.labels(upstream, kind, method if method in ("GET", "HEAD") else "OTHER",
                                      status_label(status)).inc()
        self.upstream_seconds.labels(upstream, kind).observe(seconds)
        if kind == "manifest" and method == "GET":
            self.manifest_gets.labels(upstream).inc()
        if headers is not None:
            remaining = parse_ratelimit(headers.get("ratelimit-remaining"))
            if remaining is not None:
                self.ratelimit_remaining.labels(upstream).set(remaining)
            limit = parse_ratelimit(headers.get("ratelimit-limit"))
            if limit is not None:
                self.ratelimit_limit.labels(upstream).set(limit)

    def observe_upstream_bytes(self, upstream: str, kind: str, size: int) -> None:
        self.upstream_bytes.labels(_pick(upstream, self.upstreams), _pick(kind, ("manifest", "blob"))).inc(size)

    # -- gc ---------------------------------------------------------------------------------
    def observe_gc(self, report: GcReportLike) -> None:
        """One gc sweep of this process finished (gc.GcReport): its removals, result, time.

        A dry run counts nothing. A run that found another gc holding the lock counts as
        "skipped"; one with errors as "failed" (what it removed still counts)."""
        if report.dry_run:
            return
        if not report.ran:
            self.gc_runs.labels("skipped").inc()
            return
        for item in report.items:
            kind, reason = _pick(item.kind, EVICTION_KINDS), _pick(item.reason, EVICTION_REASONS)
            self.evictions.labels(kind, reason).inc()
            self.evicted_bytes.labels(kind, reason).inc(max(item.bytes, 0))
        self.gc_runs.labels("failed" if report.errors else "ok").inc()
        self.gc_last_run.set(time.time())
        self.gc_last_seconds.set(report.duration)
        self.gc_sweeps += 1

    # -- state gauges ---------------------------------------------------------------------
    def set_fills(self, in_flight: int, clients: int) -> None:
        self.fills_in_flight.set(in_flight)
        self.fill_clients.set(clients)

    def set_store(self, totals: Mapping[str, tuple[int, int]], scanned_at: float) -> None:
        """Store totals: kind -> (objects, bytes)."""
        for kind in STORE_KINDS:
            objects, size = totals.get(kind, (0, 0))
            self.store_objects.labels(kind).set(objects)
            self.store_bytes.labels(kind).set(size)
        self.store_scan_time.set(scanned_at)

    def set_disk(self, free: int, size: int) -> None:
        self.disk_free.set(free)
        self.disk_size.set(size)

    # -- scraping -------------------------------------------------------------------------
    def add_collector(self, collector: Collector) -> None:
        """Run `collector(self)` before each scrape (it sets state gauges)."""
        self._collectors.append(collector)

    async def collect(self) -> None:
        for collector in self._collectors:
            await collector(self)

    def render(self) -> bytes:
        return generate_latest(self.registry)
