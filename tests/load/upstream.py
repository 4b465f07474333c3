"""The load run's upstream: the fake registry serving the generated catalogue, in its own
process so that it does not share an event loop with regcache or the load clients.

    python -m tests.load.upstream --port 5999

It keeps counters instead of a request log (a 60 s run makes tens of thousands of
requests) and serves them at GET /stats: requests by method and kind, and blob GETs per
digest, from which the run reports duplicate upstream fetches.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from aiohttp import web

from tests.fakes.registry import FakeRegistry, Recorded
from tests.load.catalog import Catalog, CatalogBlobs, CatalogManifests


class LoadUpstream(FakeRegistry):
    def __init__(self, catalog: Catalog, chunk_size: int) -> None:
        super().__init__(blobs=CatalogBlobs(catalog), manifests=CatalogManifests(catalog),  # type: ignore[arg-type]
                         chunk_size=chunk_size)
        self.by_kind: Counter[str] = Counter()
        self.blob_gets: Counter[str] = Counter()

    def _record(self, request: web.Request) -> Recorded:
        path = request.path
        kind = "blob" if "/blobs/" in path else "manifest" if "/manifests/" in path else path
        self.by_kind[f"{request.method} {kind}"] += 1
        if kind == "blob" and request.method == "GET":
            self.blob_gets[path.rsplit("/", 1)[1]] += 1
        entry = Recorded(request.method, path, request.query_string, {}, started=time.monotonic())
        request["recorded"] = entry
        return entry

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_get("/stats", self._stats)
        return app

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response({"by_kind": dict(self.by_kind), "blob_gets": dict(self.blob_gets)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chunk-size", type=int, default=256 * 1024)
    args = parser.parse_args()
    upstream = LoadUpstream(Catalog(args.seed), args.chunk_size)
    web.run_app(upstream.app(), host="127.0.0.1", port=args.port, print=None, access_log=None,
                handle_signals=True)


if __name__ == "__main__":
    main()
