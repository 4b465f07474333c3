"""The benchmark harness keeps working: `bench/run.py --smoke` runs end to end.

This is not a timed test: it checks that the bench starts every server, measures every
figure without an error and prints the table. The figures themselves come from full runs
(`python3 bench/run.py`, docs/benchmarks.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.real_upstream
def test_bench_smoke_runs_every_figure_and_prints_the_table(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--results", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "| figure | better | registry:2 | regcache | limit | regcache/registry:2 | regcache/limit |" \
        in out.stdout, out.stdout + out.stderr

    record = json.loads((tmp_path / "latest.json").read_text())
    failed = [f"{fig}/{target}: {rep['error']}"
              for fig, per in record["raw"].items() for target, reps in per.items()
              for rep in reps if isinstance(rep, dict) and "error" in rep]
    assert failed == [], failed
    assert record["meta"]["caches"] == ["registry:2", "regcache"], record["notes"]

    rows = {r["key"]: r for r in record["rows"]}
    for column in ("registry:2", "regcache"):
        for figure in ("hit_1_mib_s", "hit_8_mib_s", "cold_mib_s", "cold_ttfb_ms", "cold8_wall_s",
                       "head_tag_rps", "get_tag_rps", "get_digest_rps", "peak_rss_mib"):
            assert rows[figure][column] is not None and rows[figure][column] > 0, (figure, column)
    for figure in ("hit_1_mib_s", "cold_mib_s", "cold8_wall_s", "head_tag_rps", "get_digest_rps"):
        assert rows[figure]["limit"] > 0, figure
    # The upstream counts are read from its access log: a cold miss fetched the blob at least once.
    for column in ("registry:2", "regcache"):
        assert rows["cold_upstream_gets"][column] >= 1
        assert rows["get_tag_upstream_per_request"][column] is not None
