"""Turn the raw repetitions into the table (medians, ratios) and the JSON record of a run."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

CACHES = ("registry:2", "regcache")
KIND_LABELS = {"head_tag": "manifest HEAD by tag", "get_tag": "manifest GET by tag",
               "get_digest": "manifest GET by digest"}


@dataclass
class Row:
    """One line of the table: the median of each column and the direction that is better."""

    key: str                    # stable name for the JSON record (comparisons across runs)
    label: str
    better: str                 # "higher" or "lower"
    values: dict[str, float | None]   # registry:2, regcache, limit
    fmt: str = "{:,.0f}"

    def ratio(self, a: str, b: str) -> float | None:
        x, y = self.values.get(a), self.values.get(b)
        if x is None or y is None or y == 0:
            return None
        return x / y


def median(reps: list[dict] | None, key: str) -> float | None:
    vals = [r[key] for r in (reps or []) if isinstance(r, dict) and r.get(key) is not None]
    return statistics.median(vals) if vals else None


def build_rows(raw: dict, peak_rss: dict[str, float | None]) -> list[Row]:
    """The table rows, in the order of issue 7."""
    def col(figure: str, key: str, limit: Callable[[], float | None] | None = None) -> dict:
        per = raw.get(figure, {})
        vals = {c: median(per.get(c), key) for c in CACHES}
        vals["limit"] = limit() if limit else median(per.get("limit"), key)
        return vals

    def best_nginx(figure: str) -> Callable[[], float | None]:
        def f() -> float | None:
            vals = [median(raw.get(figure, {}).get(n), "mib_s") for n in ("nginx-sendfile", "nginx-copy")]
            vals = [v for v in vals if v is not None]
            return max(vals) if vals else None
        return f

    rows = [
        Row("hit_1_mib_s", "hit, 1 client (MiB/s)", "higher", col("hit_1", "mib_s", best_nginx("hit_1"))),
        Row("hit_8_mib_s", "hit, 8 clients aggregate (MiB/s)", "higher", col("hit_8", "mib_s", best_nginx("hit_8"))),
        Row("cold_mib_s", "cold miss, 1 client (MiB/s)", "higher", col("cold", "mib_s")),
        Row("cold_ttfb_ms", "cold miss, time to first byte (ms)", "lower", col("cold", "ttfb_ms"), "{:,.1f}"),
        Row("cold_upstream_gets", "cold miss, upstream blob GETs", "lower", col("cold", "upstream_gets"), "{:,.0f}"),
        Row("cold8_upstream_gets", "8 concurrent cold, upstream blob GETs", "lower", col("cold8", "upstream_gets"), "{:,.0f}"),
        Row("cold8_wall_s", "8 concurrent cold, wall time (s); limit: one direct fetch", "lower",
            col("cold8", "wall_s"), "{:,.2f}"),
        Row("cold8_wall_s_vs_8_direct", "8 concurrent cold, wall time (s); limit: 8 clients direct", "lower",
            col("cold8", "wall_s", lambda: median(raw.get("cold8", {}).get("direct-8-clients"), "wall_s")),
            "{:,.2f}"),
    ]
    for kind, label in KIND_LABELS.items():
        fig = f"manifest_{kind}"
        rows += [
            Row(f"{kind}_rps", f"{label}, c=32 (req/s)", "higher", col(fig, "ok_rps")),
            Row(f"{kind}_p50_ms", f"{label}, p50 (ms)", "lower", col(fig, "p50_ms"), "{:,.1f}"),
            Row(f"{kind}_p99_ms", f"{label}, p99 (ms)", "lower", col(fig, "p99_ms"), "{:,.1f}"),
            Row(f"{kind}_errors", f"{label}, errors", "lower", col(fig, "errors"), "{:,.0f}"),
        ]
        if kind.endswith("_tag"):
            vals = col(fig, "upstream_per_request")
            vals["limit"] = None
            rows.append(Row(f"{kind}_upstream_per_request", f"{label}, upstream requests per request", "lower", vals, "{:,.2f}"))
    rows.append(Row("peak_rss_mib", "peak RSS over the run (MiB)", "lower",
                    {"registry:2": peak_rss.get("registry:2"), "regcache": peak_rss.get("regcache"),
                     "limit": None}))
    return rows


def _cell(v: float | None, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def table(rows: list[Row]) -> str:
    """Markdown table with both ratios."""
    head = ("| figure | better | registry:2 | regcache | limit | regcache/registry:2 | regcache/limit |\n"
            "|---|---|---:|---:|---:|---:|---:|\n")
    body = "".join(
        f"| {r.label} | {r.better} | {_cell(r.values['registry:2'], r.fmt)} | "
        f"{_cell(r.values['regcache'], r.fmt)} | {_cell(r.values['limit'], r.fmt)} | "
        f"{_ratio(r.ratio('regcache', 'registry:2'))} | {_ratio(r.ratio('regcache', 'limit'))} |\n"
        for r in rows)
    return head + body


def _cmd(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def machine(repo: Path) -> dict:
    """Where and on what the run happened."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dirty = _cmd(["git", "-C", str(repo), "status", "--porcelain", "--", "regcache"]) not in ("", "?")
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "loadavg_start": os.getloadavg(),
        "python": platform.python_version(),
        "docker_registry": _cmd(["docker-registry", "--version"]),
        "nginx": _cmd(["nginx", "-v"]),
        "commit": _cmd(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
        + (" + uncommitted regcache/ changes" if dirty else ""),
    }


def write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, default=str))


def rows_json(rows: list[Row]) -> list[dict]:
    return [{"key": r.key, "figure": r.label, "better": r.better, **r.values,
             "regcache/registry:2": r.ratio("regcache", "registry:2"),
             "regcache/limit": r.ratio("regcache", "limit")} for r in rows]
