"""Blob download client for the bench: N forked processes, each one raw-socket HTTP/1.1 GET.

Run as its own process (`python3 bench/blobclient.py ...`), so it never shares a GIL or an event
loop with the harness. Each child reads the body with readinto1 into one reused 1 MiB buffer
(one recv_into per call, nothing kept), so its cost per byte is the kernel's copy out of the
socket, the same as any client's. All children block on a pipe and start together. Prints one
JSON object: per-client timings (time.perf_counter, CLOCK_MONOTONIC, comparable across
processes), bytes, status and CPU seconds, plus the aggregate.

Usage: blobclient.py PORT PATH --clients N [--expect-size BYTES] [--sha256 HEX]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import resource
import socket
import sys
import time

BUF = 1 << 20


def _read_headers(f) -> tuple[int, dict[str, str]]:
    status_line = f.readline()
    if not status_line:
        raise ConnectionError("connection closed before the status line")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b"\n", b""):
            return status, headers
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()


def _read_exact(f, n: int, mv: memoryview, sink, first: list) -> int:
    """Read n bytes (or to EOF when n < 0) into the reused buffer; returns bytes read."""
    got = 0
    while n < 0 or got < n:
        want = BUF if n < 0 else min(BUF, n - got)
        k = f.readinto1(mv[:want])
        if not k:
            if n < 0:
                return got
            raise ConnectionError(f"body ended after {got} of {n} bytes")
        if not first:
            first.append(time.perf_counter())
        if sink is not None:
            sink(mv[:k])
        got += k
    return got


def _read_chunked(f, mv: memoryview, sink, first: list) -> int:
    total = 0
    while True:
        size = int(f.readline().split(b";")[0], 16)
        if size == 0:
            while f.readline() not in (b"\r\n", b"\n", b""):
                pass
            return total
        total += _read_exact(f, size, mv, sink, first)
        f.readline()


def fetch(port: int, path: str, want_hash: bool) -> dict:
    """One GET; timings relative to nothing (absolute perf_counter values)."""
    buf = bytearray(b"\1" * BUF)   # written once, so its pages are faulted in before the clock
    mv = memoryview(buf)
    hasher = hashlib.sha256() if want_hash else None
    first: list[float] = []
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    out: dict = {"t_start": time.perf_counter()}
    try:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     f"Accept: */*\r\nUser-Agent: regcache-bench\r\nConnection: close\r\n\r\n"
                     .encode())
        f = sock.makefile("rb", buffering=64 << 10)  # bodies bypass it (reads >= 64 KiB)
        status, headers = _read_headers(f)
        out["t_headers"] = time.perf_counter()
        out["status"] = status
        sink = hasher.update if hasher else None
        if headers.get("transfer-encoding", "").lower() == "chunked":
            n = _read_chunked(f, mv, sink, first)
        elif "content-length" in headers:
            n = _read_exact(f, int(headers["content-length"]), mv, sink, first)
        else:
            n = _read_exact(f, -1, mv, sink, first)
        out["bytes"] = n
        f.close()
        sock.close()
    except Exception as exc:  # reported, never raised: the harness decides
        out["error"] = f"{type(exc).__name__}: {exc}"
        out.setdefault("bytes", 0)
    out["t_end"] = time.perf_counter()
    out["t_first_body"] = first[0] if first else out["t_end"]
    if hasher is not None:
        out["sha256"] = hasher.hexdigest()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_s"] = (ru.ru_utime - ru0.ru_utime) + (ru.ru_stime - ru0.ru_stime)
    return out


def _wait_until(t: float) -> None:
    """Sleep, then spin the last 3 ms: a vCPU that is halted when the clock starts adds
    milliseconds of wake-up latency to the time to first byte on these VMs."""
    remaining = t - time.perf_counter()
    if remaining > 0.003:
        time.sleep(remaining - 0.003)
    while time.perf_counter() < t:
        pass


def run(port: int, path: str, clients: int, want_hash: bool) -> list[dict]:
    """Fork the clients, release them together, collect their JSON lines."""
    kids = []
    for _ in range(clients):
        go_r, go_w = os.pipe()
        res_r, res_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(go_w)
            os.close(res_r)
            # Touch every object now, so copy-on-write page faults after fork() land before
            # the clock starts instead of inflating the time to first byte.
            gc.collect()
            gc.freeze()
            start_at = float(os.read(go_r, 64))
            _wait_until(start_at)
            data = json.dumps(fetch(port, path, want_hash)).encode()
            with os.fdopen(res_w, "wb") as w:
                w.write(data)
            os._exit(0)
        os.close(go_r)
        os.close(res_w)
        kids.append((pid, go_w, res_r))
    start_at = time.perf_counter() + 0.05
    for _, go_w, _ in kids:
        os.write(go_w, repr(start_at).encode())
    results = []
    for pid, go_w, res_r in kids:
        with os.fdopen(res_r, "rb") as r:
            raw = r.read()
        os.close(go_w)
        os.waitpid(pid, 0)
        results.append(json.loads(raw) if raw else {"error": "client died", "bytes": 0})
    return results


def summarize(results: list[dict], expect_size: int | None, sha256: str | None) -> dict:
    """Aggregate throughput over the wall time from the first start to the last end."""
    t0 = min(r["t_start"] for r in results)
    t1 = max(r["t_end"] for r in results)
    errors = [r["error"] for r in results if "error" in r]
    for r in results:
        if "error" in r:
            continue
        if r.get("status") != 200:
            errors.append(f"status {r.get('status')}")
        elif expect_size is not None and r["bytes"] != expect_size:
            errors.append(f"got {r['bytes']} bytes, expected {expect_size}")
        elif sha256 and r.get("sha256") != sha256:
            errors.append(f"sha256 {r.get('sha256')} != {sha256}")
    total = sum(r["bytes"] for r in results)
    wall = t1 - t0
    return {
        "clients": len(results),
        "bytes": total,
        "wall_s": wall,
        "mib_s": total / wall / (1 << 20) if wall > 0 else 0.0,
        "ttfb_ms": min(r["t_first_body"] - r["t_start"] for r in results) * 1000,
        "ttfb_headers_ms": min(r.get("t_headers", r["t_end"]) - r["t_start"] for r in results) * 1000,
        "client_cpu_s": sum(r.get("cpu_s", 0.0) for r in results),
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("port", type=int)
    ap.add_argument("path")
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--expect-size", type=int)
    ap.add_argument("--sha256")
    args = ap.parse_args(argv)
    results = run(args.port, args.path, args.clients, bool(args.sha256))
    summary = summarize(results, args.expect_size, args.sha256)
    json.dump(summary, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
