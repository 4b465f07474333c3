"""Run an aiohttp application on 127.0.0.1 in a thread with its own event loop.

The token server and the CDN live in the test process (so tests can read their
counters directly) but must not share pytest-aiohttp's per-test event loop: the
upstream is session-scoped and outlives every test loop. A dedicated thread with
its own loop is independent of whatever loop the test runs on.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from aiohttp import web

from .net import LOOPBACK


class ThreadedServer:
    """An aiohttp app served from a background thread; start/stop are blocking calls.

    `app_factory` builds a fresh `web.Application` for every start, because an
    application is frozen once served. State that must survive a restart (counters)
    therefore lives outside the app, in the object that made the factory.
    """

    def __init__(self, app_factory: Callable[[], web.Application], name: str,
                 port: int = 0) -> None:
        self._app_factory = app_factory
        self._name = name
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(ready, failure),
                                        name=f"{self._name}:{self.port}", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError(f"{self._name} did not start within {timeout}s")
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]

    def stop(self, timeout: float = 10.0) -> None:
        if not self.running:
            return
        assert self._loop is not None and self._stopped is not None
        self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(timeout)
        self._thread = None

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(ready))
        except BaseException as exc:  # reported to start() through `failure`
            failure.append(exc)
            ready.set()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self, ready: threading.Event) -> None:
        self._stopped = asyncio.Event()
        runner = web.AppRunner(self._app_factory(), access_log=None,
                               handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, LOOPBACK, self.port, reuse_address=True)
            await site.start()
            # Remember the bound port so that a restart comes back on the same one.
            self.port = runner.addresses[0][1]
            ready.set()
            await self._stopped.wait()
        finally:
            await runner.cleanup()
