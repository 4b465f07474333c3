"""Cache lifecycle (issue 4): sliding TTL, shared blobs, index children, TTL changes,
size cap with LRU, orphans and temp files, grace.

The clock is the tests': last-access times are file mtimes, set with os.utime, and the
sweep gets `now`. Hits go through a running regcache (in-process, fake upstream) whose
access-time flush is called directly (`Services.flush_access_times`), so a refreshed TTL is
what the server itself wrote. Upstream requests are counted where caching is the point.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from regcache.app import SERVICES, create_app
from regcache.config import CacheConfig
from regcache.eviction import BLOB, MANIFEST, TAG, Entry, Policy, plan
from regcache.gc import collect
from regcache.store import FsStore
from tests.fakes.fixtures import fake, make_settings  # noqa: F401  (fixture)
from tests.lifecycle_support import (
    DAY, age, age_all, blob_exists, content_bytes, manifest_exists, put_blob, put_image, put_index,
    put_tag, stored_files,
)

TTL = 30 * DAY  # the 720h default


@pytest.fixture
async def server(fake, tmp_path):
    """A running regcache over `fake`; yields (client, services)."""
    clients = []

    async def start(**cache):
        app = create_app(make_settings(tmp_path / "data", fake.base_url, **cache))
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client, app[SERVICES]

    yield start
    for client in clients:
        await client.close()


async def pull(client: TestClient, repo: str, tag: str) -> dict:
    """Pull like a client: manifest by tag, then every blob; returns the manifest."""
    resp = await client.get(f"/v2/{repo}/manifests/{tag}")
    assert resp.status == 200, await resp.text()
    manifest = json.loads(await resp.read())
    for desc in [manifest["config"], *manifest["layers"]]:
        blob = await client.get(f"/v2/{repo}/blobs/{desc['digest']}")
        assert blob.status == 200
        assert len(await blob.read()) == desc["size"]
    return manifest


def image_paths(store: FsStore, image: dict, repo: str, tag: str) -> list:
    from regcache.reference import parse_digest
    return [store.tag_path("docker.io", repo, tag), store.manifest_path(parse_digest(image["manifest"]))] + \
        [store.blob_path(parse_digest(d)) for d in [image["config"], *image["layers"]]]


def present(store: FsStore, image: dict) -> bool:
    return manifest_exists(store, image["manifest"]) and \
        all(blob_exists(store, d) for d in [image["config"], *image["layers"]])


def absent(store: FsStore, image: dict, shared: set[str] = frozenset()) -> bool:
    return not manifest_exists(store, image["manifest"]) and \
        not any(blob_exists(store, d) for d in [image["config"], *image["layers"]] if d not in shared)


# -- sliding TTL through the server --------------------------------------------------------

async def test_hit_refreshes_ttl_and_unpulled_image_expires(fake, server):
    hot = fake.add_image("library/hot", "1", [b"hot layer" * 1000])
    cold = fake.add_image("library/cold", "1", [b"cold layer" * 1000])
    client, services = await server()
    await pull(client, "library/hot", "1")
    await pull(client, "library/cold", "1")
    await services.flush_access_times()
    store = services.store
    age_all(store, 25 * DAY)  # both last used 25 days ago

    gets_before = fake.count("GET", "/blobs/")
    await pull(client, "library/hot", "1")  # a hit: served from the cache...
    assert fake.count("GET", "/blobs/") == gets_before
    await services.flush_access_times()   # ...and its access time written by the server

    report = collect(store, services.settings.cache, now=time.time() + 10 * DAY)
    assert present(store, hot) and store.tag_path("docker.io", "library/hot", "1").exists()
    # The fake gives every image the same config blob: hot keeps it alive.
    assert absent(store, cold, shared={hot["config"]})
    assert not store.tag_path("docker.io", "library/cold", "1").exists()
    assert report.removed["expired"].objects == 3  # cold's tag, manifest and layer
    assert report.kept.objects == 3


def seed_blobs(store: FsStore, fake, image: dict) -> None:
    """Put an image's blobs in the store as a pull long ago would have (no fill runs now:
    a fill that committed a second ago is still remembered by the server for a moment)."""
    for digest in [image["config"], *image["layers"]]:
        put_blob(store, fake.blobs[digest])


async def test_expired_image_is_fetched_and_recorded_again(fake, server):
    image = fake.add_image("library/again", "1", [b"again" * 500])
    client, services = await server()
    seed_blobs(services.store, fake, image)
    await pull(client, "library/again", "1")
    await services.flush_access_times()
    age_all(services.store, TTL + DAY)
    collect(services.store, services.settings.cache)
    assert stored_files(services.store) == {}

    # This gc ran as another process would (the CronJob): the server still holds the
    # manifest in memory and believes the tag record is written. Its next access-time flush
    # finds those files gone and forgets them, so the next pull stores both again.
    manifest_gets = fake.count("GET", "/manifests/")
    await pull(client, "library/again", "1")
    await services.flush_access_times()
    await pull(client, "library/again", "1")
    assert present(services.store, image)
    assert services.store.tag_path("docker.io", "library/again", "1").exists()
    assert fake.count("GET", "/manifests/") == manifest_gets + 1


async def test_shared_blob_survives_while_either_image_is_live(fake, server):
    shared = b"shared base layer" * 2000
    one = fake.add_image("library/one", "1", [shared, b"one only"])
    two = fake.add_image("library/two", "1", [shared, b"two only"])
    client, services = await server()
    store = services.store
    seed_blobs(store, fake, one)
    seed_blobs(store, fake, two)
    await pull(client, "library/one", "1")
    await pull(client, "library/two", "1")
    await services.flush_access_times()
    age_all(store, 40 * DAY)
    await pull(client, "library/one", "1")  # only image one is used again
    await services.sweep()  # the server's own sweep (flushes access times first)
    assert present(store, one)
    assert absent(store, two, shared={one["layers"][0], one["config"]})

    # Now image two comes back and image one goes cold, including the shared layer's own
    # access time: the layer stays because image two's live manifest references it.
    await pull(client, "library/two", "1")
    await services.flush_access_times()
    age(image_paths(store, one, "library/one", "1"), 40 * DAY)
    await services.sweep()
    assert present(store, two)
    assert absent(store, one, shared={two["layers"][0], two["config"]})
    assert blob_exists(store, one["layers"][0])


async def test_lowering_ttl_expires_old_content_at_the_next_sweep(fake, server):
    image = fake.add_image("library/week", "1", [b"a week old" * 300])
    client, services = await server()
    await pull(client, "library/week", "1")
    await services.flush_access_times()
    age_all(services.store, 7 * DAY)
    report = await services.sweep()  # the server's own sweep, ttl 720h: nothing is old enough
    assert report.removed_total.objects == 0 and present(services.store, image)
    await client.close()

    client, services = await server(ttl="72h")  # config changed, server restarted
    report = await services.sweep()
    assert absent(services.store, image)
    assert report.removed["expired"].objects == 4
    # The removed manifest is not served from the server's memory any more: a pull goes upstream.
    gets = fake.count("GET", "/manifests/")
    await pull(client, "library/week", "1")
    assert fake.count("GET", "/manifests/") == gets + 1


async def test_periodic_sweep_runs_in_the_server(fake, server):
    fake.add_image("library/periodic", "1", [b"periodic" * 100])
    client, services = await server(sweep_interval="200ms", gc_grace="0s")
    await pull(client, "library/periodic", "1")
    await services.flush_access_times()
    age_all(services.store, TTL + DAY)
    for _ in range(50):
        if services.last_sweep is not None and services.last_sweep.removed_total.objects:
            break
        await asyncio.sleep(0.1)
    assert services.last_sweep is not None
    assert stored_files(services.store) == {}


# -- references, grace, orphans, temp files (store built directly) -----------------------------

@pytest.fixture
def store(tmp_path) -> FsStore:
    store = FsStore(tmp_path / "data")
    store.prepare()
    return store


def test_index_keeps_child_manifests_and_their_blobs(store):
    amd = put_image(store, "library/multi", None, [b"amd64 layer"])
    arm = put_image(store, "library/multi", None, [b"arm64 layer"])
    index = put_index(store, "library/multi", "latest", [amd, arm])
    age(amd.paths + arm.paths, 60 * DAY)   # only the index and its tag were used recently
    collect(store, CacheConfig())
    assert all(p.exists() for p in amd.paths + arm.paths + index.paths)
    age(index.paths, 60 * DAY)
    report = collect(store, CacheConfig())
    assert stored_files(store) == {}
    assert report.removed_by_kind()[MANIFEST].objects == 3


def test_grace_protects_recent_content_even_with_a_tiny_ttl(store):
    image = put_image(store, "library/new", "1", [b"just committed"])
    cache = CacheConfig(ttl=1.0, gc_grace=3600.0)
    collect(store, cache, now=time.time() + 60)
    assert all(p.exists() for p in image.paths)
    collect(store, cache, now=time.time() + 60, grace=0)
    assert not any(p.exists() for p in image.paths)


def test_orphaned_tags_stale_temp_files_and_empty_folders_go(store):
    orphan = put_tag(store, "library/gone", "1", "sha256:" + "ab" * 32)
    garbage = put_tag(store, "library/garbage", "1", "sha256:" + "cd" * 32)
    garbage.write_text("not json")
    age([orphan, garbage], 2 * 3600)
    stale = store.tmp_dir / "crashed-fill"
    stale.write_bytes(b"x" * 1000)
    age([stale], 3 * 3600)
    in_flight = store.tmp_dir / "running-fill"
    in_flight.write_bytes(b"y" * 1000)
    age([in_flight], 20 * 60)  # 20 minutes: younger than fill_timeout (30m)
    report = collect(store, CacheConfig())
    assert not orphan.exists() and not garbage.exists()
    assert report.removed["orphaned"].objects == 2
    assert not stale.exists() and in_flight.exists()
    assert report.removed["stale"] .objects == 1
    # The emptied folders go on a later run, once untouched for the grace period.
    age([orphan.parent, orphan.parent.parent], 2 * 3600)
    collect(store, CacheConfig())
    assert not orphan.parent.exists()


def test_blob_used_between_scan_and_removal_is_kept(store):
    image = put_image(store, "library/raced", "1", [b"raced layer"])
    age(image.paths, 60 * DAY)

    def serve_it_after_the_scan(phase: str, done: int, total: int | None) -> None:
        if phase == "scan blobs" and done == total:  # the server serves the image right now
            age([image.paths[0], image.paths[-1]], 0)

    report = collect(store, CacheConfig(), progress=serve_it_after_the_scan)
    assert all(p.exists() for p in image.paths)  # the tag and all it references are kept
    assert report.in_use == 1 and report.removed_total.objects == 0


# -- size cap ----------------------------------------------------------------------------------

def test_size_cap_evicts_least_recently_used_down_to_the_low_watermark(store):
    base = os.urandom(50_000)  # shared by every image, like a common base layer
    images = [put_image(store, f"library/app{i}", "1", [base, os.urandom(100_000)]) for i in range(6)]
    now = time.time()
    for i, image in enumerate(images):  # app0 used 6 days ago ... app5 used 1 day ago
        age(image.paths, (6 - i) * DAY, now)
    hot = put_image(store, "library/hot", "1", [os.urandom(100_000)])
    age(hot.paths[2:], 9 * DAY, now)  # hot's blobs were last fetched long ago; its tag is fresh
    # Bytes only each app image holds: manifest, config, its own layer (paths[3] is the base).
    own = [sum(p.stat().st_size for p in (im.paths[1], im.paths[2], im.paths[4])) for im in images]

    total = content_bytes(store)
    cache = CacheConfig(max_size=int(total / 0.96), high_watermark=0.95, low_watermark=0.60)
    report = collect(store, cache, now=now)
    target = int(0.60 * cache.max_size)
    assert report.target_bytes == target and report.target_reached
    assert report.content_bytes_before == total
    assert report.content_bytes_after == content_bytes(store) <= target
    # Least recently used first, and only as many images as needed to reach the target.
    needed = next(k for k in range(len(images) + 1) if total - sum(own[:k]) <= target)
    evicted = [i for i, image in enumerate(images) if not manifest_exists(store, image.manifest)]
    assert evicted == list(range(needed)) and needed >= 2
    assert all(not images[i].paths[p].exists() for i in evicted for p in (0, 1, 4))  # tag, manifest, layer
    assert all(p.exists() for p in hot.paths)      # its old blobs are pinned by its live manifest
    assert blob_exists(store, images[0].blobs[1])  # the shared base layer stays while used


def test_size_cap_never_evicts_a_blob_a_live_manifest_references():
    """Pure policy: a blob pinned by a tagged manifest outlives older unpinned content."""
    now = 1_000_000.0
    entries = {e.key: e for e in [
        Entry("tag:up/a/_tags/1", TAG, 50, now - 10, ("manifest:A",)),
        Entry("manifest:A", MANIFEST, 100, now - 10, ("blob:big",)),
        Entry("blob:big", BLOB, 1000, now - 9000, ()),      # old access, but pinned by A
        Entry("blob:loose", BLOB, 500, now - 100, ()),      # pulled alone, unreferenced
    ]}
    policy = Policy(ttl=10**6, grace=0, max_size=1500, high_watermark=0.95, low_watermark=0.75)
    result = plan(entries, now, policy)  # 1600 content bytes > 1425: down to 1125
    assert result.evicted == ["blob:loose"]  # not blob:big, although it is older
    # When the tag is the oldest, it goes first and unpins its manifest, which unpins the blob.
    entries["tag:up/a/_tags/1"] = entries["tag:up/a/_tags/1"]._replace(last_access=now - 20000)
    entries["manifest:A"] = entries["manifest:A"]._replace(last_access=now - 20000)
    result = plan(entries, now, policy)
    assert result.evicted == ["tag:up/a/_tags/1", "manifest:A", "blob:big"]


def test_free_space_floor_evicts_like_the_cap():
    now = 1_000_000.0
    entries = {f"blob:{i}": Entry(f"blob:{i}", BLOB, 100, now - i * 1000) for i in range(10)}
    policy = Policy(ttl=10**6, grace=0, min_free_space=1000, high_watermark=0.95, low_watermark=0.85)
    result = plan(entries, now, policy, free_bytes=700)
    # 1000 * 1.10 wanted free: 400 bytes to go, oldest first.
    assert result.evicted == ["blob:9", "blob:8", "blob:7", "blob:6"]
    assert plan(entries, now, policy, free_bytes=5000).evicted == []


def test_blob_held_only_by_an_evicted_manifest_goes_with_it():
    now = 1_000_000.0
    ttl = 100_000
    entries = {e.key: e for e in [
        Entry("tag:up/m/_tags/1", TAG, 50, now - 5000, ("manifest:M",)),
        Entry("manifest:M", MANIFEST, 100, now - 5000, ("blob:X",)),
        Entry("blob:X", BLOB, 50, now - 2 * ttl, ()),   # expired itself; only M holds it
        Entry("blob:Y", BLOB, 1000, now - 10, ()),
    ]}
    policy = Policy(ttl=ttl, grace=0, max_size=1200, high_watermark=0.95, low_watermark=0.88)
    result = plan(entries, now, policy)
    # Evicting M reaches the target (1150 -> 1050 <= 1056), and X goes with it anyway.
    assert result.expired == [] and result.evicted == ["tag:up/m/_tags/1", "manifest:M", "blob:X"]
