"""Issue 5 acceptance for /metrics: every series seeded, exact counter changes over a
scripted sequence of pulls against the real upstream (distribution with Hub-like token
auth and a blob CDN), parsed with prometheus_client's own parser; bounded labels; the
Grafana dashboard only uses series that exist.

Faults a real registry cannot produce on demand (a slow body, Docker Hub's rate-limit
headers) use the in-process fake upstream.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from regcache.app import SERVICES, create_app
from regcache.config import build_settings
from regcache.metrics import STORE_KINDS, parse_ratelimit
from tests.fakes.fixtures import fake, make_settings  # noqa: F401  (fixture)
from tests.fakes.registry import Fault
from tests.support.images import Image, build_image, random_layer
from tests.support.scrape import counter_deltas, families, is_nan, parse, scrape

DASHBOARD = Path(__file__).resolve().parent.parent / "dashboards" / "regcache.json"
ACCEPT = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
])
JOIN_CLIENTS = 4
BIG_LAYER = 24 * 1024 * 1024  # long enough a download that all concurrent clients join it


def real_settings(root: Path, upstream: Any, **cache: Any):
    raw = {
        "storage": {"root": str(root)},
        "upstreams": [upstream.config_entry()],
        "listeners": [{"address": "127.0.0.1", "port": 0, "default_upstream": "docker.io"}],
        "cache": {"access_flush_interval": "1s", **cache},
        "log": {"level": "debug"},
    }
    return build_settings(raw, {})


async def serve(settings) -> TestClient:
    client = TestClient(TestServer(create_app(settings), host="127.0.0.1"))
    await client.start_server()
    return client


async def pull(client: TestClient, repo: str, tag: str, image: Image) -> None:
    """What a puller does: the manifest by tag, then config and layers by digest."""
    resp = await client.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT})
    assert resp.status == 200, await resp.text()
    assert await resp.read() == image.manifest
    for digest in (image.config_digest, *image.layer_digests):
        resp = await client.get(f"/v2/{repo}/blobs/{digest}")
        assert resp.status == 200, await resp.text()
        assert await resp.read() == image.blobs[digest]


def http(route: str, count: int, status_class: str = "2xx", method: str = "GET") -> dict[str, float]:
    """Expected request counter and duration-histogram count changes."""
    return {
        f'regcache_http_requests_total{{method="{method}",route="{route}",status_class="{status_class}"}}': count,
        f'regcache_http_request_duration_seconds_count{{route="{route}"}}': count,
    }


def cache(kind: str, result: str, count: int) -> dict[str, float]:
    return {f'regcache_cache_results_total{{kind="{kind}",result="{result}"}}': count}


def served(kind: str, result: str, size: int) -> dict[str, float]:
    return {f'regcache_served_bytes_total{{kind="{kind}",result="{result}"}}': size}


def upstream(kind: str, method: str, status: str, count: int) -> dict[str, float]:
    return {f'regcache_upstream_requests_total{{kind="{kind}",method="{method}",status="{status}",'
            f'upstream="docker.io"}}': count}


def merge(*parts: dict[str, float]) -> dict[str, float]:
    """Sum expectations; upstream request counts also imply the latency-histogram counts."""
    out: dict[str, float] = {}
    for part in parts:
        for name, n in part.items():
            out[name] = out.get(name, 0) + n
    for name, n in list(out.items()):
        match = re.match(r'regcache_upstream_requests_total\{kind="(\w+)",method="(\w+)".*', name)
        if match:
            hist = f'regcache_upstream_request_duration_seconds_count{{kind="{match[1]}",upstream="docker.io"}}'
            out[hist] = out.get(hist, 0) + n
            if match[1] == "manifest" and match[2] == "GET":
                gets = 'regcache_upstream_manifest_gets_total{upstream="docker.io"}'
                out[gets] = out.get(gets, 0) + n
    return out


def fetched(kind: str, size: int) -> dict[str, float]:
    return {f'regcache_upstream_received_bytes_total{{kind="{kind}",upstream="docker.io"}}': size}


def revalidation(result: str) -> dict[str, float]:
    return {f'regcache_tag_revalidations_total{{result="{result}"}}': 1}


def fills(count: int) -> dict[str, float]:
    return {'regcache_blob_fills_total{result="committed"}': count}


def blob_bytes(image: Image, digests: list[str] | None = None) -> int:
    return sum(len(image.blobs[d]) for d in (digests if digests is not None else image.blobs))


# -- the acceptance sequence ------------------------------------------------------------
async def test_scripted_pulls_move_exactly_the_expected_counters(hub_upstream, tmp_path):
    repo, tag = "library/metrics-retag", "latest"
    first = await hub_upstream.aretag(f"{repo}:{tag}")
    big = build_image([random_layer(BIG_LAYER, seed="metrics-join")])
    await hub_upstream.apush("library/metrics-big:1", big)
    big_layer = big.layer_digests[0]
    client = await serve(real_settings(tmp_path / "data", hub_upstream))
    try:
        last = await scrape(client)
        scrape_itself = http("other", 1)

        async def step(expected: dict[str, float]) -> None:
            nonlocal last
            now = await scrape(client)
            assert counter_deltas(last, now) == expected
            last = now

        # 1. cold: the first upstream request meets the token challenge (401), gets a
        #    token, retries; the manifest is HEADed by tag then GET by digest; every blob
        #    GET is a 307 to the CDN plus the CDN's 200.
        await pull(client, repo, tag, first)
        size = blob_bytes(first)
        await step(merge(
            scrape_itself, http("manifest", 1), http("blob", 3),
            cache("manifest", "miss", 1), cache("blob", "miss", 3), fills(3),
            served("manifest", "miss", len(first.manifest)), served("blob", "miss", size),
            upstream("manifest", "HEAD", "401", 1), upstream("token", "GET", "2xx", 1),
            upstream("manifest", "HEAD", "2xx", 1), upstream("manifest", "GET", "2xx", 1),
            upstream("blob", "GET", "3xx", 3), upstream("blob", "GET", "2xx", 3),
            fetched("manifest", len(first.manifest)), fetched("blob", size),
        ))

        # 2. warm: one tag HEAD upstream, everything else from the cache.
        await pull(client, repo, tag, first)
        await step(merge(
            scrape_itself, http("manifest", 1), http("blob", 3),
            cache("manifest", "hit", 1), cache("blob", "hit", 3), revalidation("unchanged"),
            served("manifest", "hit", len(first.manifest)), served("blob", "hit", size),
            upstream("manifest", "HEAD", "2xx", 1),
        ))

        # 3. re-tag upstream: the HEAD shows a new digest; the shared base layer is a hit.
        second = await hub_upstream.aretag(f"{repo}:{tag}")
        shared = [d for d in second.blobs if d in first.blobs]
        new = [d for d in second.blobs if d not in first.blobs]
        assert len(shared) == 1 and len(new) == 2
        await pull(client, repo, tag, second)
        await step(merge(
            scrape_itself, http("manifest", 1), http("blob", 3),
            cache("manifest", "miss", 1), revalidation("changed"),
            cache("blob", "hit", 1), cache("blob", "miss", 2), fills(2),
            served("manifest", "miss", len(second.manifest)),
            served("blob", "hit", blob_bytes(second, shared)), served("blob", "miss", blob_bytes(second, new)),
            upstream("manifest", "HEAD", "2xx", 1), upstream("manifest", "GET", "2xx", 1),
            upstream("blob", "GET", "3xx", 2), upstream("blob", "GET", "2xx", 2),
            fetched("manifest", len(second.manifest)), fetched("blob", blob_bytes(second, new)),
        ))

        # 4. upstream down: the HEAD gets no answer, the tag is served stale.
        with hub_upstream.down():
            await pull(client, repo, tag, second)
            await step(merge(
                scrape_itself, http("manifest", 1), http("blob", 3),
                cache("manifest", "stale", 1), revalidation("failed"), cache("blob", "hit", 3),
                served("manifest", "stale", len(second.manifest)), served("blob", "hit", blob_bytes(second)),
                upstream("manifest", "HEAD", "error", 1),
            ))

        # 5. concurrent clients of one uncached blob: one download, the others join it.
        async def get_big() -> bytes:
            resp = await client.get(f"/v2/library/metrics-big/blobs/{big_layer}")
            assert resp.status == 200
            return await resp.read()

        bodies = await asyncio.gather(*(get_big() for _ in range(JOIN_CLIENTS)))
        assert all(body == big.blobs[big_layer] for body in bodies)
        big_size = len(big.blobs[big_layer])
        await step(merge(
            scrape_itself, http("blob", JOIN_CLIENTS),
            cache("blob", "miss", 1), cache("blob", "joined", JOIN_CLIENTS - 1), fills(1),
            served("blob", "miss", big_size), served("blob", "joined", (JOIN_CLIENTS - 1) * big_size),
            upstream("token", "GET", "2xx", 1), upstream("blob", "GET", "3xx", 1),
            upstream("blob", "GET", "2xx", 1), fetched("blob", big_size),
        ))
        assert last["regcache_fills_in_flight"] == 0
        assert last["regcache_fill_clients"] == 0
    finally:
        await client.close()
    # The counters agree with what the upstream itself saw (its access log and its CDN).
    assert hub_upstream.blob_fetches(big_layer) == 1


# -- seeding, parsing, bounded labels ----------------------------------------------------
async def test_every_series_exists_before_the_first_request(fake, tmp_path):
    client = await serve(make_settings(tmp_path / "data", fake.base_url))
    try:
        resp = await client.get("/metrics")
        text = await resp.text()
    finally:
        await client.close()
    found = families(text)
    samples = parse(text)
    counters = {name: f for name, f in found.items() if f.type == "counter"}
    assert len(counters) >= 11
    for family in counters.values():
        assert family.samples, f"{family.name} has no series before the first event"
        assert all(s.value == 0 for s in family.samples), family.name
    expected_series = [
        'regcache_http_requests_total{method="GET",route="manifest",status_class="2xx"}',
        'regcache_cache_results_total{kind="blob",result="joined"}',
        'regcache_cache_results_total{kind="manifest",result="stale"}',
        'regcache_tag_revalidations_total{result="changed"}',
        'regcache_served_bytes_total{kind="blob",result="hit"}',
        'regcache_upstream_requests_total{kind="manifest",method="GET",status="429",upstream="docker.io"}',
        'regcache_upstream_manifest_gets_total{upstream="docker.io"}',
        'regcache_upstream_received_bytes_total{kind="blob",upstream="docker.io"}',
        'regcache_evicted_bytes_total{kind="blob",reason="expired"}',
        'regcache_gc_runs_total{result="ok"}',
        'regcache_upstream_request_duration_seconds_count{kind="manifest",upstream="docker.io"}',
    ]
    for name in expected_series:
        assert samples[name] == 0, name
    # Rate-limit gauges: unknown until a header is seen, never a false "0 pulls left".
    assert is_nan(samples['regcache_upstream_ratelimit_remaining{upstream="docker.io"}'])
    assert samples["regcache_fills_in_flight"] == 0
    assert samples['regcache_build_info{version="0.1.0"}'] == 1
    assert samples["regcache_disk_size_bytes"] > 0
    for kind in STORE_KINDS:
        assert samples[f'regcache_store_objects{{kind="{kind}"}}'] == 0


async def test_labels_stay_bounded_across_many_repositories_and_tags(fake, tmp_path):
    """Repository, tag and digest never become label values: the series set is fixed."""
    client = await serve(make_settings(tmp_path / "data", fake.base_url))
    try:
        await client.get("/v2/")
        first = await scrape(client)
        for i in range(12):
            image = fake.add_image(f"team{i}/app{i}", f"v{i}", [os.urandom(1000 + i)])
            resp = await client.get(f"/v2/team{i}/app{i}/manifests/v{i}")
            assert resp.status == 200
            for digest in image["layers"]:
                assert (await client.get(f"/v2/team{i}/app{i}/blobs/{digest}")).status == 200
            assert (await client.get(f"/v2/team{i}/app{i}/manifests/missing{i}")).status == 404
            assert (await client.get(f"/v2/team{i}/x/blobs/sha256:{i:064x}")).status == 404
        second = await scrape(client)
    finally:
        await client.close()
    assert set(second) == set(first)
    for name in second:
        assert not re.search(r"team\d|app\d|sha256:|missing", name), name


async def test_ratelimit_headers_become_headroom_gauges(fake, tmp_path):
    """Docker Hub sends `ratelimit-remaining: 76;w=21600` on manifest requests; the
    fake adds Hub's headers (a real registry does not send them)."""
    remaining = iter(range(76, 0, -1))

    @web.middleware
    async def hub_headers(request: web.Request, handler):
        response = await handler(request)
        if "/manifests/" in request.path:
            response.headers["ratelimit-limit"] = "100;w=21600"
            response.headers["ratelimit-remaining"] = f"{next(remaining)};w=21600"
        return response

    hub = TestServer(_with_middleware(fake, hub_headers), host="127.0.0.1")
    await hub.start_server()
    fake.base_url = str(hub.make_url("")).rstrip("/")
    fake.add_image("library/alpine", "3", [b"layer"])
    client = await serve(make_settings(tmp_path / "data", fake.base_url))
    try:
        for _ in range(2):
            assert (await client.get("/v2/alpine/manifests/3")).status == 200
        samples = await scrape(client)
    finally:
        await client.close()
        await hub.close()
    # HEAD (76), GET by digest (75), HEAD (74): the last value seen wins.
    assert samples['regcache_upstream_ratelimit_remaining{upstream="docker.io"}'] == 74
    assert samples['regcache_upstream_ratelimit_limit{upstream="docker.io"}'] == 100
    assert samples['regcache_upstream_manifest_gets_total{upstream="docker.io"}'] == 1


def _with_middleware(fake, middleware) -> web.Application:
    app = fake.app()
    app.middlewares.append(middleware)
    return app


def test_parse_ratelimit():
    assert parse_ratelimit("20;w=21600") == 20
    assert parse_ratelimit("100") == 100
    assert parse_ratelimit(" 0;w=21600") == 0
    assert parse_ratelimit(None) is None
    assert parse_ratelimit("") is None
    assert parse_ratelimit("lots") is None


# -- state gauges ------------------------------------------------------------------------
async def test_fill_gauges_count_running_downloads_and_their_clients(fake, tmp_path):
    """A slow upstream body (fake: 40 chunks, 50 ms apart) keeps one download running
    while three clients stream from it."""
    fake.chunk_size = 16 * 1024
    data = os.urandom(40 * fake.chunk_size)
    digest = fake.add_blob(data)
    fake.faults[digest] = Fault(chunk_delay=0.05)
    client = await serve(make_settings(tmp_path / "data", fake.base_url))
    try:
        async def get() -> bytes:
            resp = await client.get(f"/v2/library/slow/blobs/{digest}")
            return await resp.read()

        readers = [asyncio.create_task(get()) for _ in range(3)]
        samples = await scrape(client)
        for _ in range(200):  # until all three subscribed (each scrape is a real request)
            if samples["regcache_fill_clients"] == 3 or all(r.done() for r in readers):
                break
            await asyncio.sleep(0.01)
            samples = await scrape(client)
        assert samples["regcache_fills_in_flight"] == 1
        assert samples["regcache_fill_clients"] == 3
        assert all(body == data for body in await asyncio.gather(*readers))
        samples = await scrape(client)
        assert samples["regcache_fills_in_flight"] == 0
        assert samples["regcache_fill_clients"] == 0
        assert samples['regcache_cache_results_total{kind="blob",result="joined"}'] == 2
        assert fake.count("GET", f"/blobs/{digest}") == 1
    finally:
        await client.close()


async def test_store_gauges_match_the_files_on_disk(hub_upstream, tmp_path):
    image = hub_upstream.image("library/hello:latest")
    client = await serve(real_settings(tmp_path / "data", hub_upstream))
    try:
        await pull(client, "library/hello", "latest", image)
        samples = await scrape(client)
    finally:
        await client.close()
    root = tmp_path / "data" / "v1"
    for kind, folder in (("blob", "blobs"), ("manifest", "manifests"), ("tag", "tags")):
        files = [p for p in (root / folder).rglob("*") if p.is_file()]
        assert samples[f'regcache_store_objects{{kind="{kind}"}}'] == len(files), kind
        assert samples[f'regcache_store_bytes{{kind="{kind}"}}'] == sum(p.stat().st_size for p in files), kind
    assert samples['regcache_store_objects{kind="blob"}'] == len(image.blobs)
    assert samples['regcache_store_bytes{kind="blob"}'] == blob_bytes(image)
    stat = os.statvfs(root)
    assert samples["regcache_disk_size_bytes"] == stat.f_blocks * stat.f_frsize
    assert samples["regcache_store_scan_timestamp_seconds"] > 0


async def test_gc_sweep_counts_evictions_and_the_store_gauges_follow(hub_upstream, tmp_path):
    """The server's own sweep (the code `regcache gc` runs too): every removal is counted
    by kind and reason with its bytes, the run is counted, and the next scrape rescans
    the store. Last-access times are file mtimes, so ageing the files is ageing the cache."""
    image = hub_upstream.image("library/hello:latest")
    client = await serve(real_settings(tmp_path / "data", hub_upstream))
    try:
        await pull(client, "library/hello", "latest", image)
        before = await scrape(client)
        assert before['regcache_store_objects{kind="blob"}'] == len(image.blobs)
        services = client.server.app[SERVICES]
        await services.flush_access_times()
        old = time.time() - 2 * services.settings.cache.ttl
        for path in (tmp_path / "data" / "v1").rglob("*"):
            if path.is_file() and path.parent.name != "tmp":
                os.utime(path, (old, old))
        report = await services.sweep()
        after = await scrape(client)
    finally:
        await client.close()
    assert report.items and not report.errors
    expected: dict[str, float] = {'regcache_gc_runs_total{result="ok"}': 1}
    for item in report.items:
        for name, n in ((f'regcache_evictions_total{{kind="{item.kind}",reason="{item.reason}"}}', 1),
                        (f'regcache_evicted_bytes_total{{kind="{item.kind}",reason="{item.reason}"}}', item.bytes)):
            expected[name] = expected.get(name, 0) + n
    deltas = counter_deltas(before, after)
    assert {k: v for k, v in deltas.items() if "_evict" in k or "_gc_" in k} == expected
    removed_blobs = [i for i in report.items if i.kind == "blob"]
    assert len(removed_blobs) == len(image.blobs)
    assert sum(i.bytes for i in removed_blobs) == blob_bytes(image)
    assert after["regcache_gc_last_run_timestamp_seconds"] >= before["regcache_store_scan_timestamp_seconds"]
    for kind in ("blob", "manifest", "tag"):
        assert after[f'regcache_store_objects{{kind="{kind}"}}'] == 0, kind
        assert after[f'regcache_store_bytes{{kind="{kind}"}}'] == 0, kind


async def test_metrics_disabled_means_no_endpoint(fake, tmp_path):
    settings = make_settings(tmp_path / "data", fake.base_url)
    raw_disabled = build_settings({
        "storage": {"root": str(settings.storage_root)},
        "upstreams": [{"name": "docker.io", "url": fake.base_url}],
        "listeners": [{"address": "127.0.0.1", "port": 0}],
        "metrics": {"enabled": False},
    }, {})
    client = await serve(raw_disabled)
    try:
        resp = await client.get("/metrics")
        assert resp.status == 404
        assert (await client.get("/healthz")).status == 200
    finally:
        await client.close()


# -- the Grafana dashboard ---------------------------------------------------------------
_SELECTOR = re.compile(r"\b(regcache_[a-z0-9_]+)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_PROMETHEUS_LABELS = {"instance", "job"}


def _dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queries.append(target["expr"])
    for variable in dashboard["templating"]["list"]:
        if variable.get("type") == "query":
            queries.append(variable["definition"])
    return queries


async def test_dashboard_queries_use_only_exposed_series(fake, tmp_path):
    dashboard = json.loads(DASHBOARD.read_text())
    client = await serve(make_settings(tmp_path / "data", fake.base_url))
    try:
        samples = await scrape(client)
    finally:
        await client.close()
    exposed: dict[str, list[dict[str, str]]] = {}
    for name in samples:
        base, _, labels = name.partition("{")
        exposed.setdefault(base, []).append({k: v for k, _, v in _MATCHER.findall(labels)})
    queries = _dashboard_queries(dashboard)
    assert len(queries) >= 20
    for query in queries:
        selectors = _SELECTOR.findall(query)
        assert selectors, f"no regcache series in {query!r}"
        for name, matchers in selectors:
            assert name in exposed, f"{name} (in {query!r}) is not in /metrics"
            for label, op, wanted in _MATCHER.findall(matchers or ""):
                if label in _PROMETHEUS_LABELS:
                    continue
                values = {series.get(label) for series in exposed[name]}
                assert values - {None}, f"{name} has no label {label!r} (in {query!r})"
                if op == "=":
                    assert wanted in values, f"{name}{{{label}={wanted!r}}} matches nothing"
                elif op == "=~":
                    assert any(re.fullmatch(wanted, v or "") for v in values), \
                        f"{name}{{{label}=~{wanted!r}}} matches nothing"
        for label in re.findall(r"\bby\s*\(([^)]*)\)", query):
            for name in (n.strip() for n in label.split(",")):
                assert name == "le" or name in _PROMETHEUS_LABELS or any(
                    name in series for sel, _ in selectors for series in exposed[sel]), \
                    f"grouping by {name!r} in {query!r}: no such label"


def test_dashboard_is_importable_with_a_datasource_input():
    dashboard = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    # The variable lets the Grafana sidecar (no import step) resolve ${DS_PROMETHEUS} too.
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    titles = set()
    for panel in dashboard["panels"]:
        titles.add(panel["title"])
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
            assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in panel["targets"])
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for wanted in ("Blob hit ratio", "Bytes saved", "Upstream errors", "Rate-limit headroom",
                   "Store fill", "Request latency (p50 / p95 / p99)"):
        assert wanted in titles
