"""`regcache serve` as a subprocess (python -m regcache), for tests that need a real process:
SIGKILL mid-fill, peak RSS under load. Started and stopped by pid only.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path: Path, storage_root: Path, upstream_url: str, port: int,
                 upstream_options: dict[str, Any] | None = None, cache: dict[str, Any] | None = None,
                 access_log: bool = False) -> Path:
    config = {
        "storage": {"root": str(storage_root)},
        "cache": {"access_flush_interval": "1s", **(cache or {})},
        "upstreams": [{"name": "docker.io", "url": upstream_url,
                       "connect_timeout": "2s", "read_timeout": "5s", **(upstream_options or {})}],
        "listeners": [{"address": "127.0.0.1", "port": port, "default_upstream": "docker.io"}],
        "log": {"level": "info", "access_log": access_log},
        "metrics": {"enabled": True, "port": 0},
    }
    path.write_text(yaml.safe_dump(config))
    return path


class ServeProcess:
    """One `python -m regcache serve --config FILE` process listening on 127.0.0.1:port."""

    def __init__(self, config: Path, port: int, log_path: Path) -> None:
        self.config = config
        self.port = port
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = 20.0) -> "ServeProcess":
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        with open(self.log_path, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "regcache", "serve", "--config", str(self.config),
                cwd=str(REPO), env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise RuntimeError(f"regcache exited with {self.proc.returncode}: {self.log_tail()}")
            if await _healthy(self.port):
                return self
            await asyncio.sleep(0.05)
        raise RuntimeError(f"regcache not ready after {timeout}s: {self.log_tail()}")

    def proc_status(self, field: str) -> int | None:
        """A kB figure of /proc/<pid>/status (VmRSS, VmHWM), or None once the process is gone."""
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1])
        except FileNotFoundError:
            return None
        return None

    async def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        await self.proc.wait()

    async def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (graceful), then SIGKILL if it does not exit in time; returns the exit status."""
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else None
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            os.kill(self.proc.pid, signal.SIGKILL)
            return await self.proc.wait()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


async def _healthy(port: int) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        line = await asyncio.wait_for(reader.readline(), 2)
        return b" 200 " in line
    except (OSError, asyncio.TimeoutError):
        return False
    finally:
        writer.close()
