"""Load run: concurrent clients pulling cached and uncached images through `regcache serve`.

    python -m tests.load.run_load                      # 200 clients, 60 s (the issue's figures)
    python -m tests.load.run_load --clients 50 --seconds 10 --json out.json

Everything runs on 127.0.0.1 in three processes: the generated upstream (tests/load/upstream.py),
regcache (`python -m regcache serve`), and this one with the clients (tests/load/client.py).
The run prints and returns: pulls and requests, errors, corrupted blobs, upstream blob GETs
and duplicates (a blob fetched upstream more than once), regcache's peak RSS (VmHWM from
/proc/<pid>/status, and the highest VmRSS sampled), and the state of the store afterwards
(no temp file; every stored blob hashes to its name).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from tests.fakes.storecheck import stored_blobs, tmp_files
from tests.load.client import LoadClients
from tests.support.net import LOOPBACK, free_port, wait_http
from tests.support.regcache_proc import REPO, RegcacheProcess, upstream_entry

KiB = 1024


async def run_load(clients: int = 200, seconds: float = 60.0, warm_images: int = 30,
                   workdir: Path | None = None, cached_share: float = 0.7, keep_data: bool = False) -> dict:
    """Run the load; the store (several hundred MiB) is deleted after its check unless `keep_data`."""
    _raise_fd_limit()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="regcache-load-"))
    upstream_port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    upstream_log = open(workdir / "upstream.log", "wb")
    upstream = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.load.upstream", "--port", str(upstream_port),
        cwd=str(REPO), env=env, stdout=upstream_log, stderr=upstream_log)
    server: RegcacheProcess | None = None
    try:
        await asyncio.to_thread(wait_http, upstream_port, "/v2/", 30.0)
        upstream_config = upstream_entry(f"http://{LOOPBACK}:{upstream_port}", connect_timeout="2s",
                                         read_timeout="30s")
        server = await RegcacheProcess(workdir, upstreams=[upstream_config], cache={"min_free_space": "1Gi"},
                                       log={"access_log": True}).astart()
        rss_samples: list[int] = []
        sampler = asyncio.create_task(_sample_rss(server, rss_samples))
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
        async with aiohttp.ClientSession(server.url, connector=connector,
                                         timeout=timeout, auto_decompress=False) as session:
            load = LoadClients("", warm_images, cached_share=cached_share)
            await load.warm(session)
            rss_after_warm = server.proc_status("VmRSS")
            started = time.monotonic()
            await load.run(session, clients, seconds)
            elapsed = time.monotonic() - started
        async with aiohttp.ClientSession() as plain:
            async with plain.get(f"http://127.0.0.1:{upstream_port}/stats") as resp:
                upstream_stats = await resp.json()
        sampler.cancel()
        peak_hwm = server.proc_status("VmHWM")
        final_rss = server.proc_status("VmRSS")
        exit_status = await server.astop()
        store = await asyncio.to_thread(_check_store, workdir / "data" / "v1")
    finally:
        if server is not None:
            await server.astop()
        if upstream.returncode is None:
            upstream.terminate()
            await upstream.wait()
        upstream_log.close()
    blob_gets = upstream_stats["blob_gets"]
    result = {
        "command": f"python -m tests.load.run_load --clients {clients} --seconds {seconds:g} --warm {warm_images}",
        "clients": clients, "seconds": round(elapsed, 1), "warm_images": warm_images,
        "cached_share": cached_share,
        **load.stats.summary(),
        "pulls_per_second": round(load.stats.pulls / elapsed, 1),
        "mib_per_second": round(load.stats.bytes / elapsed / KiB / KiB, 1),
        "upstream": {"by_kind": upstream_stats["by_kind"], "blob_gets": sum(blob_gets.values()),
                     "distinct_blobs": len(blob_gets),
                     "duplicate_blob_gets": {d: n for d, n in blob_gets.items() if n > 1}},
        "regcache": {"peak_rss_kib_vmhwm": peak_hwm, "max_sampled_rss_kib": max(rss_samples, default=None),
                     "rss_after_warm_kib": rss_after_warm, "final_rss_kib": final_rss,
                     "exit_status": exit_status},
        "store": store,
        "workdir": str(workdir),
    }
    if not keep_data:
        shutil.rmtree(workdir / "data", ignore_errors=True)
    return result


def _check_store(root: Path) -> dict:
    blobs = stored_blobs(root)
    bad = []
    total = 0
    for digest, path in blobs.items():
        hasher = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                hasher.update(chunk)
                total += len(chunk)
        if "sha256:" + hasher.hexdigest() != digest:
            bad.append(digest)
    return {"tmp_files": tmp_files(root), "blobs": len(blobs), "bytes": total, "bad_blobs": bad}


async def _sample_rss(server: RegcacheProcess, samples: list[int]) -> None:
    while True:
        value = server.proc_status("VmRSS")
        if value is not None:
            samples.append(value)
        await asyncio.sleep(0.25)


def _raise_fd_limit() -> None:
    """Hundreds of client connections, each with a socket on both sides, plus fill files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 16384) if hard != resource.RLIM_INFINITY else 16384
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def failures(result: dict) -> list[str]:
    """What makes a load run fail: errors, corruption, duplicate upstream fetches, a dirty store."""
    problems = []
    if result["errors"]:
        problems.append(f"{result['errors']} errors: {result['error_samples'][:5]}")
    if result["corrupted_blobs"]:
        problems.append(f"{result['corrupted_blobs']} corrupted blobs")
    if result["upstream"]["duplicate_blob_gets"]:
        problems.append(f"blobs fetched upstream more than once: {result['upstream']['duplicate_blob_gets']}")
    if result["store"]["tmp_files"] or result["store"]["bad_blobs"]:
        problems.append(f"store not clean: {result['store']}")
    if result["regcache"]["exit_status"] != 0:
        problems.append(f"regcache exited with {result['regcache']['exit_status']}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warm", type=int, default=30, help="images pulled before the clock starts")
    parser.add_argument("--cached-share", type=float, default=0.7)
    parser.add_argument("--json", help="also write the result here")
    parser.add_argument("--keep-data", action="store_true", help="keep regcache's store afterwards")
    args = parser.parse_args()
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(run_load(args.clients, args.seconds, args.warm, cached_share=args.cached_share,
                             keep_data=args.keep_data))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    problems = failures(result)
    for problem in problems:
        print("FAIL:", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
