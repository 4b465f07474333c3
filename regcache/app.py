"""Composition: the only place regcache's objects are built and wired together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import AsyncIterator

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from regcache.config import ListenerConfig, Settings
from regcache.gauges import watch_state
from regcache.gc import GcReport, collect, summary_lines
from regcache.metrics import Metrics
from regcache.proxy import PullThroughCache
from regcache.store import AccessRecorder, FsStore
from regcache.upstream.client import UpstreamClient
from regcache.web.handlers import STATE, AppState, add_routes
from regcache.web.middleware import make_middleware
from regcache.web.routing import Router

log = logging.getLogger("regcache")

LOW_SPACE_SWEEP_GAP = 30.0


class Services:
    """The objects shared by every listener of one process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # A blob read with an on-disk time older than half the grace is touched at once,
        # so gc (in this process or a CronJob, same grace) never removes a blob in use.
        # (At most one extra utime per blob per refresh interval; never per request.)
        refresh = max(min(settings.cache.gc_grace, settings.cache.ttl) / 2, 1.0)
        self.store = FsStore(settings.storage_root, refresh_after=refresh)
        self.access = AccessRecorder()
        self.metrics = Metrics(CollectorRegistry(), tuple(u.name for u in settings.upstreams),
                               settings.cache.max_size) if settings.metrics.enabled else None
        self.session: aiohttp.ClientSession | None = None
        self.clients: dict[str, UpstreamClient] = {}
        self.cache: PullThroughCache | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sweep_wanted = asyncio.Event()
        self._last_low_space_sweep = float("-inf")
        self.last_sweep: GcReport | None = None

    async def start(self) -> None:
        removed = await asyncio.to_thread(self.store.prepare)
        if removed:
            log.info("removed %d temp files left by an earlier run", removed)
        # No upstream is contacted here: regcache starts and serves its cache while
        # upstreams are unreachable (registry:2 cannot, prior-art.md item 8).
        connector = aiohttp.TCPConnector(limit=256, limit_per_host=64, ttl_dns_cache=60)
        self.session = aiohttp.ClientSession(connector=connector, read_bufsize=1 << 20)
        observe = self.metrics.observe_upstream if self.metrics else None
        observe_bytes = self.metrics.observe_upstream_bytes if self.metrics else None
        self.clients = {u.name: UpstreamClient(self.session, u, observe, observe_bytes)
                        for u in self.settings.upstreams}
        self.cache = PullThroughCache(self.store, self.clients, self.settings.cache, self.access,
                                      self.metrics.observe_cache if self.metrics else None)
        if self.metrics is not None:
            fills = self.cache.fills
            watch_state(self.metrics, self.store, lambda: fills.values())
        self._tasks.append(asyncio.create_task(self._flush_access_times()))
        if self.settings.cache.sweep_interval > 0:
            self.cache.on_low_space = self._low_space
            self._tasks.append(asyncio.create_task(self._sweep_periodically()))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.cache is not None:
            await self.cache.shutdown()
        await asyncio.to_thread(self.access.flush)
        if self.session is not None:
            await self.session.close()

    async def _flush_access_times(self) -> None:
        """Last-access times go to disk in batches, never per request."""
        while True:
            await asyncio.sleep(self.settings.cache.access_flush_interval)
            await self.flush_access_times()

    async def flush_access_times(self) -> None:
        """Write pending access times; forget what gc removed (it is stored again when asked)."""
        await asyncio.to_thread(self.access.flush)
        self._forget(self.access.missing)

    def _forget(self, paths: list[Path]) -> None:
        if self.cache is None:
            return
        for path in paths:
            found = self.store.classify(path)
            if found is None:
                continue
            kind, name = found
            if kind == "manifest" and isinstance(name, str):
                self.cache.forget_manifest(name)
            elif kind == "tag" and isinstance(name, tuple):
                self.cache.forget_tag(*name)

    # -- eviction (the same code as `regcache gc`; a CronJob run and this take turns) -----
    async def sweep(self) -> GcReport:
        """Flush access times, then collect: expiry, size cap, free-space floor, temp files."""
        await self.flush_access_times()
        report = await asyncio.to_thread(collect, self.store, self.settings.cache)
        if self.metrics is not None:
            self.metrics.observe_gc(report)
        self.last_sweep = report
        if self.cache is not None:
            for digest in report.removed_manifests():
                self.cache.forget_manifest(digest)
        self._forget([self.store.tag_path_by_name(i.name) for i in report.items if i.kind == "tag"])
        for line in summary_lines(report):
            log.info("sweep %s", line)
        for error in report.errors:
            log.error("sweep: %s", error)
        return report

    async def _sweep_periodically(self) -> None:
        interval = self.settings.cache.sweep_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sweep_wanted.wait(), interval)
            self._sweep_wanted.clear()
            try:
                await self.sweep()
            except Exception:  # a failed sweep must not end the loop; the next one retries
                log.exception("sweep failed")

    def _low_space(self) -> None:
        """Free space fell below the floor: sweep now (at most once per LOW_SPACE_SWEEP_GAP)."""
        now = time.monotonic()
        if now - self._last_low_space_sweep >= LOW_SPACE_SWEEP_GAP:
            self._last_low_space_sweep = now
            self._sweep_wanted.set()

    def state(self, default_upstream: str) -> AppState:
        assert self.cache is not None, "Services.start() first"
        return AppState(self.cache, self.clients, self.store, self.metrics,
                        Router(self.settings, default_upstream))


SERVICES = web.AppKey("services", Services)


def _application(services: Services, registry_api: bool = True) -> web.Application:
    app = web.Application(middlewares=[make_middleware(services.metrics, services.settings.log.access_log)],
                          handler_args={"max_field_size": 16384})
    add_routes(app, with_metrics=services.metrics is not None, registry_api=registry_api)
    return app


def build_app(services: Services, listener: ListenerConfig, registry_api: bool = True) -> web.Application:
    """An aiohttp app for one listener over already started services."""
    app = _application(services, registry_api)
    app[STATE] = services.state(listener.default_upstream)
    return app


def create_app(settings: Settings, listener: ListenerConfig | None = None) -> web.Application:
    """A self-contained app that owns its services: what tests and embedders use."""
    default_upstream = (listener or settings.listeners[0]).default_upstream
    services = Services(settings)
    app = _application(services)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await services.start()
        app[STATE] = services.state(default_upstream)
        app[SERVICES] = services
        yield
        await services.close()

    app.cleanup_ctx.append(lifecycle)
    return app


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[list[web.AppRunner]]:
    """Start every listener (and the metrics port) over one set of services."""
    services = Services(settings)
    await services.start()
    runners: list[web.AppRunner] = []
    try:
        for listener in settings.listeners:
            runner = web.AppRunner(build_app(services, listener), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, listener.address, listener.port, reuse_address=True).start()
            runners.append(runner)
            log.info("listening on %s:%d (default upstream %s)", listener.address, listener.port,
                     listener.default_upstream)
        if settings.metrics.enabled and settings.metrics.port:
            metrics_listener = ListenerConfig(settings.metrics.address, settings.metrics.port,
                                              settings.listeners[0].default_upstream)
            runner = web.AppRunner(build_app(services, metrics_listener, registry_api=False), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, settings.metrics.address, settings.metrics.port).start()
            runners.append(runner)
        yield runners
    finally:
        for runner in runners:
            await runner.cleanup()
        await services.close()
