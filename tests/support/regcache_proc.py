"""Run `regcache serve` as a subprocess (the real CLI) on 127.0.0.1, for tests that need a
real process: real clients, crash and SIGTERM tests, peak RSS under load.

    with RegcacheProcess(tmp_path, upstreams=[hub.config_entry()]) as rc:      # sync tests
        rc.url            # http://127.0.0.1:PORT (first listener)
        rc.ports          # every listener's port (rc.hosts: as host:port)
        rc.kill()         # SIGKILL, for crash tests; rc.start() again afterwards

    async with RegcacheProcess(tmp_path, upstreams=[upstream_entry(fake.base_url)]) as rc:
        await rc.akill()  # the same from a coroutine, without blocking the event loop

The async forms matter when the upstream runs in the test's own event loop (the fake
upstream): a blocking wait there would stop the upstream, and with it a graceful stop
that waits for a fill. Signals go to the process's own pid only.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Self

import yaml

from .net import LOOPBACK, free_port, wait_http

REPO = Path(__file__).resolve().parents[2]


def upstream_entry(url: str, name: str = "docker.io", **options: Any) -> dict[str, Any]:
    """An `upstreams:` entry for an upstream without auth, such as the in-process fake."""
    return {"name": name, "url": url, **options}


def serve_config(storage_root: Path, upstreams: list[dict[str, Any]], ports: list[int],
                 listeners: list[str] | None = None, cache: dict[str, Any] | None = None,
                 log: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config of a `regcache serve` on 127.0.0.1; `listeners` names the default upstream of
    each port (default: the first upstream). The access-time flush is 1 s, not the default,
    so that tests of eviction see access times without waiting."""
    defaults = listeners or [upstreams[0]["name"]]
    assert len(defaults) == len(ports), (defaults, ports)
    return {
        "storage": {"root": str(storage_root)},
        "upstreams": upstreams,
        "listeners": [{"address": LOOPBACK, "port": port, "default_upstream": default}
                      for port, default in zip(ports, defaults)],
        "cache": {"access_flush_interval": "1s", **(cache or {})},
        "log": {"level": "info", **(log or {})},
    }


class RegcacheProcess:
    """One `python -m regcache serve --config FILE` process; its files live in `workdir`:
    data/ (storage root), regcache.yaml, regcache.log (stdout and stderr, appended across
    restarts)."""

    def __init__(self, workdir: Path, upstreams: list[dict[str, Any]],
                 listeners: list[str] | None = None, cache: dict[str, Any] | None = None,
                 log: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_root = self.workdir / "data"
        self.ports = [free_port() for _ in (listeners or [upstreams[0]["name"]])]
        self.config = serve_config(self.storage_root, upstreams, self.ports, listeners, cache, log)
        self.config_path = self.workdir / "regcache.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.log_path = self.workdir / "regcache.log"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports[0]}"

    @property
    def host(self) -> str:
        """host:port of the first listener, as clients write a mirror."""
        return self.hosts[0]

    @property
    def hosts(self) -> list[str]:
        """host:port of every listener."""
        return [f"{LOOPBACK}:{port}" for port in self.ports]

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    # -- start ----------------------------------------------------------------------------

    def _launch(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"regcache already running as pid {self.proc.pid}")
        env = dict(self.env or os.environ)
        # The repo on the path whatever the caller's cwd; output unbuffered so that the log
        # is complete when a test reads it.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "regcache", "serve", "--config", str(self.config_path)],
                cwd=str(REPO), env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def _wait_ready(self, timeout: float) -> None:
        """Until every listener answers HTTP; a process that exits first fails at once."""
        try:
            for port in self.ports:
                wait_http(port, "/v2/", timeout=timeout, proc=self.proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"regcache not ready: {exc}\n{self.log_tail()}") from None

    def start(self, timeout: float = 20.0) -> Self:
        self._launch()
        self._wait_ready(timeout)
        return self

    async def astart(self, timeout: float = 20.0) -> Self:
        self._launch()
        await asyncio.to_thread(self._wait_ready, timeout)
        return self

    # -- stop -----------------------------------------------------------------------------

    def _signal(self, sig: int) -> bool:
        """Send `sig` to our process if it still runs; False when there is nothing to signal."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        os.kill(self.proc.pid, sig)
        return True

    def _wait_or_kill(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            return self.proc.wait()

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (graceful), then SIGKILL if it does not exit in time; the exit status
        (None if it was never started). Calling it again returns the same status."""
        if not self._signal(signal.SIGTERM):
            return self.proc.returncode if self.proc is not None else None
        return self._wait_or_kill(timeout)

    async def astop(self, timeout: float = 15.0) -> int | None:
        if not self._signal(signal.SIGTERM):
            return self.proc.returncode if self.proc is not None else None
        return await asyncio.to_thread(self._wait_or_kill, timeout)

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as a crash or an OOM kill."""
        if self._signal(signal.SIGKILL):
            assert self.proc is not None
            self.proc.wait()

    async def akill(self) -> None:
        if self._signal(signal.SIGKILL):
            assert self.proc is not None
            await asyncio.to_thread(self.proc.wait)

    # -- observation ----------------------------------------------------------------------

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_text()[-chars:]

    def proc_status(self, field: str) -> int | None:
        """A kB figure of /proc/<pid>/status (VmRSS; VmHWM is the peak RSS), or None once the
        process is gone."""
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1])
        except FileNotFoundError:
            return None
        return None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.astop()
