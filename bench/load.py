"""Manifest load with `hey` (Debian package), parsed from its summary output.

hey (Go, keep-alive connections, one goroutine per worker) reaches ~60k req/s on this kind
of machine, far above any cache's manifest rate, and reports latency in 0.1 ms steps, which
is fine for caches whose p50 is milliseconds. wrk is not used: 4.1 never completes a HEAD.
"""

from __future__ import annotations

import re
import resource
import shutil
import subprocess

# One Accept line listing every manifest type, as docker/containerd send (hey keeps only the
# last -H of a name, and nginx 1.22 only sees the first of several Accept lines anyway).
ACCEPT = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
])


def hey_available() -> str | None:
    return None if shutil.which("hey") else "hey is not installed (apt-get install hey)"


def run_hey(url: str, method: str, concurrency: int, seconds: float) -> dict:
    """Load url for `seconds` with `concurrency` workers; requests/s, p50/p99 ms, errors."""
    argv = ["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-m", method,
            "-t", "20", "-H", f"Accept: {ACCEPT}", url]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise RuntimeError(f"hey failed ({out.returncode}): {out.stderr[-500:]}")
    result = parse_hey(out.stdout)
    # hey's own CPU time: evidence that the load generator is not what limits the figure.
    result["client_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result


def parse_hey(text: str) -> dict:
    """The figures of one hey summary."""
    def num(pattern: str) -> float | None:
        m = re.search(pattern, text)
        return float(m.group(1)) if m else None

    statuses = {int(code): int(n) for code, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", text)}
    err_section = text.split("Error distribution:", 1)[1] if "Error distribution:" in text else ""
    transport_errors = sum(int(n) for n in re.findall(r"^\s*\[(\d+)\]\s", err_section, re.M))
    ok = sum(n for code, n in statuses.items() if 200 <= code < 300)
    total = sum(statuses.values()) + transport_errors
    return {
        "requests": total,
        "ok": ok,
        "errors": total - ok,
        "statuses": statuses,
        "duration_s": num(r"Total:\s+([\d.]+) secs"),
        "rps": num(r"Requests/sec:\s+([\d.]+)"),
        "ok_rps": ok / num(r"Total:\s+([\d.]+) secs") if ok and num(r"Total:\s+([\d.]+) secs") else 0.0,
        "p50_ms": _ms(num(r"50% in ([\d.]+) secs")),
        "p99_ms": _ms(num(r"99% in ([\d.]+) secs")),
        "error_sample": err_section.strip().splitlines()[:3],
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000
