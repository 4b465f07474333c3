"""Process plumbing for the bench: free ports, readiness polls, stopping by pid, RSS sampling.

Every server the bench starts is tracked in a `Procs` registry so that `run.py` can stop all
of them by pid in a `finally` block (also on Ctrl-C). Nothing here kills by name.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, then release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(port: int, path: str, method: str = "GET", timeout: float = 2.0) -> int | None:
    """Status of one request to 127.0.0.1:port, or None when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return None
    finally:
        conn.close()


def _tail(path: Path | None, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:] if path else ""
    except OSError:
        return ""


def wait_http(port: int, path: str = "/v2/", timeout: float = 30.0,
              proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll until the server answers at all (any status); fail early if it exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before it was "
                               f"ready; log {log}:\n{_tail(log)}")
        if http_status(port, path) is not None:
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing answered on 127.0.0.1:{port}{path} within {timeout}s")


def _status_kib(pid: int, key: str) -> int:
    """VmRSS / VmHWM of one process in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """pid and all its descendants, found through /proc/<pid>/task/*/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                kids = Path(f"/proc/{p}/task/{task}/children").read_text().split()
                todo.extend(int(k) for k in kids)
        except OSError:
            continue
    return out


@dataclass
class Managed:
    """One started server process and its memory figures."""

    name: str
    proc: subprocess.Popen
    log_path: Path
    peak_tree_rss_kib: int = 0      # highest sampled sum of VmRSS over the process tree
    peak_hwm_kib: int = 0           # highest VmHWM of any single process in the tree

    def sample(self) -> None:
        """Take one memory sample of the process tree (called by the sampler thread)."""
        pids = descendants(self.proc.pid)
        total = sum(_status_kib(p, "VmRSS") for p in pids)
        hwm = max((_status_kib(p, "VmHWM") for p in pids), default=0)
        self.peak_tree_rss_kib = max(self.peak_tree_rss_kib, total)
        self.peak_hwm_kib = max(self.peak_hwm_kib, hwm)


@dataclass
class Procs:
    """All processes the bench started; a sampler thread tracks the memory of those asked for."""

    procs: list[Managed] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, name: str, argv: list[str], log_path: Path, env: dict | None = None,
              cwd: Path | None = None) -> Managed:
        """Start argv with stdout+stderr to log_path, in its own process group."""
        log = open(log_path, "ab")
        try:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        m = Managed(name, proc, log_path)
        with self._lock:
            self.procs.append(m)
        return m

    def stop(self, m: Managed, timeout: float = 10.0) -> None:
        """SIGTERM the process (and its group, which only it and its children are in), then KILL."""
        m.sample()
        if m.proc.poll() is None:
            try:
                os.killpg(m.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                m.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(m.proc.pid, signal.SIGKILL)
                m.proc.wait(5)
        with self._lock:
            if m in self.procs:
                self.procs.remove(m)

    def stop_all(self) -> None:
        """Stop every process still running, newest first; stop the sampler."""
        self._stop.set()
        for m in reversed(list(self.procs)):
            try:
                self.stop(m)
            except Exception as exc:  # keep stopping the others
                print(f"warning: stopping {m.name} (pid {m.proc.pid}): {exc}")

    def start_sampler(self, watched: callable, interval: float = 0.1) -> None:
        """Sample memory of the processes `watched()` returns every `interval` seconds."""
        def loop() -> None:
            while not self._stop.wait(interval):
                for m in watched():
                    m.sample()
        self._thread = threading.Thread(target=loop, name="rss-sampler", daemon=True)
        self._thread.start()
