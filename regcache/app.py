"""Composition: the only place regcache's objects are built and wired together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from regcache.config import ListenerConfig, Settings
from regcache.gauges import watch_state
from regcache.metrics import Metrics
from regcache.proxy import PullThroughCache
from regcache.store import AccessRecorder, FsStore
from regcache.upstream.client import UpstreamClient
from regcache.web.handlers import STATE, AppState, add_routes
from regcache.web.middleware import make_middleware
from regcache.web.routing import Router

log = logging.getLogger("regcache")


class Services:
    """The objects shared by every listener of one process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = FsStore(settings.storage_root)
        self.access = AccessRecorder()
        self.metrics = Metrics(CollectorRegistry(), tuple(u.name for u in settings.upstreams),
                               settings.cache.max_size) if settings.metrics.enabled else None
        self.session: aiohttp.ClientSession | None = None
        self.clients: dict[str, UpstreamClient] = {}
        self.cache: PullThroughCache | None = None
        self._tasks: list[asyncio.Task[None]] = []

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
            await asyncio.to_thread(self.access.flush)

    def state(self, default_upstream: str) -> AppState:
        assert self.cache is not None, "Services.start() first"
        return AppState(self.cache, self.clients, self.store, self.metrics,
                        Router(self.settings, default_upstream))


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
