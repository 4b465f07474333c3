"""Loopback plumbing shared by the test servers: free ports and readiness polls.

Every server a test starts listens on 127.0.0.1 only. Ports are picked by binding
port 0 and releasing it; the tiny window in which another process could grab the
port is covered by the callers retrying a start on a fresh port.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import time

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def http_status(port: int, path: str = "/", timeout: float = 2.0) -> int | None:
    """Status of one GET to 127.0.0.1:port, or None when nothing answers."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return None
    finally:
        conn.close()


def wait_http(port: int, path: str = "/", timeout: float = 20.0,
              proc: subprocess.Popen | None = None) -> int:
    """Poll until something answers HTTP on the port (any status) and return the status.

    Fails early when `proc` exits first, so a crashed server is reported at once
    instead of after the whole timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before it was ready")
        status = http_status(port, path)
        if status is not None:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing answered on {LOOPBACK}:{port}{path} within {timeout}s")
        time.sleep(0.02)
