"""Debian's `docker-registry` (distribution 2.8, the code of `registry:2`) as a
subprocess on 127.0.0.1, and its access log as the request counter.

The access log (`log.accesslog`) is Apache combined format written by gorilla's
CombinedLoggingHandler to the process's stdout, which we send to a file. The line
is written when the handler returns, which for a large blob can be a moment after
the client already has the last bytes; `AccessLog.entries()` therefore waits for
the file to stop growing before reading (a few tens of milliseconds).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .net import LOOPBACK, free_port, wait_http

REGISTRY_BIN = "/usr/bin/docker-registry"

# 127.0.0.1 - - [28/Nov/2025:09:38:00 +0000] "GET /v2/x/manifests/y HTTP/1.1" 200 123 "" "ua"
_LINE = re.compile(r'^\S+ \S+ \S+ \[[^\]]*\] "(\S+) (\S+) [^"]*" (\d{3}) ')


@dataclass(frozen=True)
class AccessEntry:
    method: str
    target: str      # path and query as sent
    status: int

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


class AccessLog:
    """Reads the access log from a mark on, so each test counts only its own requests."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def settle(self, quiet: float = 0.03, limit: float = 2.0) -> None:
        """Wait until the log has not grown for `quiet` seconds (at most `limit`)."""
        deadline = time.monotonic() + limit
        size = self._size()
        while time.monotonic() < deadline:
            time.sleep(quiet)
            new = self._size()
            if new == size:
                return
            size = new

    def reset(self) -> None:
        """Count from now on."""
        self.settle()
        self._offset = self._size()

    def entries(self, settle: bool = True) -> list[AccessEntry]:
        if settle:
            self.settle()
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            m = _LINE.match(line)
            if m:
                out.append(AccessEntry(m[1], m[2], int(m[3])))
        return out


def registry_config(*, root: Path, port: int, auth: dict | None,
                    redirect_base: str | None) -> dict:
    """distribution 2.8 configuration for a loopback upstream."""
    config: dict = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "json",
                "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(root)},
            "delete": {"enabled": True},
            # No background upload purging: it would touch the storage mid-test.
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"{LOOPBACK}:{port}", "secret": "regcache-tests-only",
                 "headers": {"X-Content-Type-Options": ["nosniff"]}},
    }
    if auth is not None:
        config["auth"] = {"token": auth}
    if redirect_base is not None:
        config["middleware"] = {"storage": [
            {"name": "redirect", "options": {"baseurl": redirect_base}}]}
    return config


class RegistryProcess:
    """One docker-registry process; stop() and start() keep the port and storage."""

    def __init__(self, workdir: Path, *, auth: dict | None, redirect_base: str | None,
                 storage_root: Path) -> None:
        self.workdir = workdir
        self.storage_root = storage_root
        self._auth = auth
        self._redirect_base = redirect_base
        self.port = 0
        self.config_path = workdir / "registry.yml"
        self.access_log = AccessLog(workdir / "access.log")
        self.stderr_path = workdir / "registry.log"
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        if self.port:                 # a restart: same port, so clients can reconnect
            self._spawn()
            return
        for attempt in range(5):      # the free port may be taken between pick and bind
            self.port = free_port()
            try:
                self._spawn()
                return
            except RuntimeError:
                if attempt == 4 or "address already in use" not in self._stderr_tail():
                    raise
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        config = registry_config(root=self.storage_root, port=self.port, auth=self._auth,
                                 redirect_base=self._redirect_base)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        # REGISTRY_* variables override the config file; never let the caller's leak in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        with self.access_log.path.open("ab") as out, self.stderr_path.open("ab") as err:
            self._proc = subprocess.Popen(
                [REGISTRY_BIN, "serve", str(self.config_path)], stdin=subprocess.DEVNULL,
                stdout=out, stderr=err, env=env, start_new_session=True)
        try:
            wait_http(self.port, "/v2/", proc=self._proc)
            # If another process took the port first, it may have answered the poll while
            # ours was failing to bind; a failed bind exits within milliseconds.
            time.sleep(0.05)
            if self._proc.poll() is not None:
                raise RuntimeError(f"{REGISTRY_BIN} exited with {self._proc.returncode}")
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise RuntimeError(f"{exc}; see {self.stderr_path}: {self._stderr_tail()}") from None

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _stderr_tail(self, n: int = 2000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return ""
