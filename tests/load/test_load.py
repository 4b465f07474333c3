"""The load run, shortened for CI: 200 concurrent clients for 20 s (the full run is 60 s:
`python -m tests.load.run_load`, figures in docs/load.md)."""

from __future__ import annotations

import pytest

from tests.load.run_load import failures, run_load


@pytest.mark.slow
async def test_200_clients_mixed_cached_and_uncached(tmp_path):
    result = await run_load(clients=200, seconds=20, warm_images=20, workdir=tmp_path)
    print({k: result[k] for k in ("pulls", "cold_pulls", "requests", "errors", "corrupted_blobs",
                                  "mib_per_second", "regcache", "upstream")})
    assert failures(result) == []
    assert result["pulls"] > 200 and result["cold_pulls"] > 20
    # Memory stays bounded: blobs stream through a small window, they are never held whole
    # (the run moves many GiB; regcache's peak stays a few hundred MiB at most).
    assert result["regcache"]["peak_rss_kib_vmhwm"] < 600 * 1024
