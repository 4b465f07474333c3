"""Run `regcache serve` as a subprocess (the real CLI) on 127.0.0.1 for integration tests.

    with RegcacheProcess(tmp_path, upstreams=[hub.config_entry()]) as rc:
        rc.url            # http://127.0.0.1:PORT (first listener)
        rc.ports          # every listener's port
        rc.kill()         # SIGKILL, for crash tests; rc.start() again afterwards
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from .net import LOOPBACK, free_port, wait_http


class RegcacheProcess:
    def __init__(self, workdir: Path, upstreams: list[dict[str, Any]],
                 listeners: list[str] | None = None, cache: dict[str, Any] | None = None,
                 log: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> None:
        """`listeners`: the default upstream of each listener (default: the first upstream)."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_root = self.workdir / "data"
        self.ports = [free_port() for _ in (listeners or [upstreams[0]["name"]])]
        self.config = {
            "storage": {"root": str(self.storage_root)},
            "upstreams": upstreams,
            "listeners": [{"address": LOOPBACK, "port": port, "default_upstream": default}
                          for port, default in zip(self.ports, listeners or [upstreams[0]["name"]])],
            "cache": {"access_flush_interval": "1s", **(cache or {})},
            "log": {"level": "info", **(log or {})},
        }
        self.config_path = self.workdir / "regcache.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.log_path = self.workdir / "regcache.log"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports[0]}"

    @property
    def host(self) -> str:
        """host:port of the first listener, as clients write a mirror."""
        return f"{LOOPBACK}:{self.ports[0]}"

    def start(self) -> "RegcacheProcess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "regcache", "serve", "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, env=self.env or dict(os.environ))
        log.close()
        for port in self.ports:
            wait_http(port, "/v2/", proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as a crash or an OOM kill."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> "RegcacheProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
