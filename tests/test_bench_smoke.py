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

    rows = {r["figure"]: r for r in record["rows"]}
    for column in ("registry:2", "regcache"):
        for figure in ("hit, 1 client (MiB/s)", "hit, 8 clients aggregate (MiB/s)",
                       "cold miss, 1 client (MiB/s)", "8 concurrent cold, wall time (s)",
                       "manifest GET by tag, c=32 (req/s)", "manifest GET by digest, c=32 (req/s)",
                       "peak RSS over the run (MiB)"):
            assert rows[figure][column] is not None and rows[figure][column] > 0, (figure, column)
    for figure in ("hit, 1 client (MiB/s)", "cold miss, 1 client (MiB/s)",
                   "manifest HEAD by tag, c=32 (req/s)"):
        assert rows[figure]["limit"] > 0, figure
    # The upstream counts are read from its access log: a cold miss fetched the blob at least once.
    assert rows["cold miss, upstream blob GETs"]["regcache"] >= 1
    assert rows["cold miss, upstream blob GETs"]["registry:2"] >= 1
