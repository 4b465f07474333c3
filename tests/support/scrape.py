"""Scrape regcache's /metrics and compare scrapes, through prometheus_client's own parser.

Samples are keyed `name{label="value",...}` with labels sorted, e.g.
`regcache_cache_results_total{kind="blob",result="hit"}`.
"""

from __future__ import annotations

import math
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[str, float]


def key(name: str, labels: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}" if inner else name


def parse(text: str) -> Samples:
    """Every sample of an exposition; raises if the text does not parse."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[key(sample.name, sample.labels)] = sample.value
    return out


def families(text: str) -> dict[str, Any]:
    """Metric families by name (type, help, samples)."""
    return {f.name: f for f in text_string_to_metric_families(text)}


async def scrape(client: Any, path: str = "/metrics") -> Samples:
    """GET /metrics with an aiohttp client (TestClient or ClientSession + URL) and parse it."""
    resp = await client.get(path)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(await resp.text())


def counter_deltas(before: Samples, after: Samples) -> Samples:
    """Non-zero changes of counters (`*_total`) and histogram counts (`*_count`).
    A series present in `after` only counts from 0 (none should be: all are seeded)."""
    out: Samples = {}
    for name, value in after.items():
        base = name.split("{", 1)[0]
        if not base.endswith(("_total", "_count")):
            continue
        delta = value - before.get(name, 0.0)
        if delta:
            out[name] = delta
    return out


def value(samples: Samples, name: str) -> float:
    """One sample's value; KeyError if it is not exposed at all."""
    return samples[name]


def is_nan(x: float) -> bool:
    return isinstance(x, float) and math.isnan(x)
