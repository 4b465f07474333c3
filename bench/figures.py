"""One repetition of each bench figure against one target. The harness (run.py) interleaves
targets within each repetition, so drift on this shared machine hits every column alike.

Upstream requests are counted from the upstream nginx's access log: the line count before a
measurement, then the lines added once the cache has committed the blob and the log has been
quiet for a moment (a cache may keep filling after its client has left).
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from load import run_hey
from seed import Seeded
from servers import Cache, Upstream

BENCH_DIR = Path(__file__).resolve().parent


def fetch(port: int, path: str, clients: int, expect_size: int | None,
          sha256: str | None = None) -> dict:
    """Run blobclient.py in its own process; its JSON summary."""
    argv = [sys.executable, str(BENCH_DIR / "blobclient.py"), str(port), path,
            "--clients", str(clients)]
    if expect_size is not None:
        argv += ["--expect-size", str(expect_size)]
    if sha256:
        argv += ["--sha256", sha256]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"blobclient failed: {out.stderr[-800:]}")
    summary = json.loads(out.stdout)
    if summary["errors"]:
        raise RuntimeError(f"blob fetch from :{port}{path}: {summary['errors'][:3]}")
    return summary


def request(port: int, method: str, path: str) -> tuple[int, bytes]:
    """One small request (warm-ups, checks)."""
    from load import ACCEPT
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, headers={"Accept": ACCEPT})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def warm_up(cache: Cache, seeded: Seeded) -> None:
    """One manifest pull, so a cold-blob figure does not also pay for the first upstream
    connection or auth ping: in CI the blob is cold but the cache has been talking upstream."""
    status, _ = request(cache.port, "GET", seeded.small_manifest_path)
    if status != 200:
        raise RuntimeError(f"{cache.name}: warm-up manifest GET answered {status}")


def settle(upstream: Upstream, cache: Cache | None, blob_hex: str, timeout: float = 120.0) -> None:
    """Wait until the cache has committed the blob and the upstream log has been quiet 0.5 s."""
    deadline = time.monotonic() + timeout
    if cache is not None:
        while not cache.blob_file(blob_hex).exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cache.name} did not store the blob within {timeout}s")
            time.sleep(0.05)
    last, quiet_since = upstream.access_lines(), time.monotonic()
    while time.monotonic() - quiet_since < 0.5 and time.monotonic() < deadline:
        time.sleep(0.1)
        now = upstream.access_lines()
        if now != last:
            last, quiet_since = now, time.monotonic()


def count_blob_requests(upstream: Upstream, since: int, blob_hex: str) -> dict:
    """Upstream GETs and HEADs of the blob (any repository) logged after line `since`."""
    entries = [e for e in upstream.access_since(since) if len(e) >= 2 and blob_hex in e[1]]
    return {"gets": sum(1 for e in entries if e[0] == "GET"),
            "heads": sum(1 for e in entries if e[0] == "HEAD"),
            "bytes": sum(int(e[3]) for e in entries if e[0] == "GET" and len(e) > 3)}


def cold_single(cache: Cache, upstream: Upstream, seeded: Seeded, around=nullcontext) -> dict:
    """Empty cache, one client fetches the big blob: throughput, first byte, upstream fetches.

    `around(cache)` is a context manager wrapped around the fetch (run.py --profile)."""
    cache.restart_empty()
    warm_up(cache, seeded)
    mark = upstream.access_lines()
    with around(cache):
        s = fetch(cache.port, seeded.blob_path(), 1, seeded.blob_size)
        settle(upstream, cache, seeded.blob_hex)
    counts = count_blob_requests(upstream, mark, seeded.blob_hex)
    return {"mib_s": s["mib_s"], "ttfb_ms": s["ttfb_ms"], "wall_s": s["wall_s"],
            "upstream_gets": counts["gets"], "upstream_heads": counts["heads"],
            "upstream_bytes": counts["bytes"], "client_cpu_s": s["client_cpu_s"]}


def cold_concurrent(cache: Cache, upstream: Upstream, seeded: Seeded, clients: int,
                    around=nullcontext) -> dict:
    """Empty cache, `clients` clients ask for the big blob at once: wall time, upstream fetches."""
    cache.restart_empty()
    warm_up(cache, seeded)
    mark = upstream.access_lines()
    with around(cache):
        s = fetch(cache.port, seeded.blob_path(), clients, seeded.blob_size)
        settle(upstream, cache, seeded.blob_hex)
    counts = count_blob_requests(upstream, mark, seeded.blob_hex)
    return {"wall_s": s["wall_s"], "mib_s": s["mib_s"], "ttfb_ms": s["ttfb_ms"],
            "upstream_gets": counts["gets"], "upstream_heads": counts["heads"],
            "upstream_bytes": counts["bytes"]}


def direct(upstream: Upstream, seeded: Seeded, clients: int) -> dict:
    """The limit for cold figures: the same fetch straight from the fast upstream."""
    s = fetch(upstream.port, seeded.blob_path(), clients, seeded.blob_size)
    return {"wall_s": s["wall_s"], "mib_s": s["mib_s"], "ttfb_ms": s["ttfb_ms"],
            "upstream_gets": clients, "client_cpu_s": s["client_cpu_s"]}


def hit(port: int, path: str, seeded: Seeded, clients: int) -> dict:
    """Throughput of a blob already on the target's disk (aggregate over `clients`)."""
    s = fetch(port, path, clients, seeded.blob_size)
    return {"mib_s": s["mib_s"], "wall_s": s["wall_s"], "ttfb_ms": s["ttfb_ms"],
            "client_cpu_s": s["client_cpu_s"]}


MANIFEST_KINDS = {
    # kind: (method, path attribute)
    "head_tag": ("HEAD", "tag"),
    "get_tag": ("GET", "tag"),
    "get_digest": ("GET", "digest"),
}


def manifest_path(seeded: Seeded, ref: str) -> str:
    if ref == "tag":
        return seeded.small_manifest_path
    return seeded.small_manifest_path.rsplit("/", 1)[0] + f"/sha256:{seeded.manifest_hex}"


def manifests(port: int, kind: str, seeded: Seeded, upstream: Upstream, concurrency: int,
              seconds: float, is_upstream: bool = False) -> dict:
    """hey against one manifest URL; also upstream requests per client request."""
    method, ref = MANIFEST_KINDS[kind]
    path = manifest_path(seeded, ref)
    status, _ = request(port, "GET", path)  # the digest must be cached before by-digest load
    if status != 200:
        raise RuntimeError(f"warm-up GET {path} on :{port} answered {status}")
    mark = upstream.access_lines()
    r = run_hey(f"http://127.0.0.1:{port}{path}", method, concurrency, seconds)
    settle(upstream, None, seeded.blob_hex, timeout=10)
    upstream_requests = upstream.access_lines() - mark
    if is_upstream:
        upstream_requests -= r["requests"]   # the load itself went to the upstream
    r["upstream_requests"] = upstream_requests
    r["upstream_per_request"] = upstream_requests / r["requests"] if r["requests"] else None
    return r
