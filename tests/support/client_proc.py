"""Process plumbing shared by the real-client harnesses.

- `client_env`: an environment that keeps clients away from the host's
  config and from the internet (proxy vars point at a closed local port, so
  a fallback to the real Docker Hub fails at once instead of leaving the
  machine).
- `isolated_argv`: wraps a command in a private mount namespace with tmpfs
  over the global state directories (/run, /var/lib, /var/tmp, /opt) and our
  own directories bound over /etc/<x>. Measured here: dockerd writes
  /etc/docker/key.json and /run/docker/plugins, containerd's runc shims put
  sockets in /run/containerd/s (hard-coded in 1.6), dockerd's own containerd
  writes /opt/containerd, skopeo and podman keep a blob-info cache in
  /var/lib/containers/cache, podman takes locks in /etc/containers/networks
  and /etc/cni/net.d. Flags alone cannot move all of these.
  The tmpfs mounts die with the last process in the namespace.
- `run`: an asyncio subprocess with a timeout; never blocks the event loop,
  which matters because regcache itself may run in-process on that loop.
- `Daemon`: a long-running process started by us and stopped by its pid.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Any fallback to a real registry must fail locally and fast.
DEAD_PROXY = "http://127.0.0.1:9"
TMPFS_DIRS = ("/run", "/var/lib", "/var/tmp", "/opt")


class ClientError(RuntimeError):
    """A client command or daemon failed; the message carries its output."""


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    elapsed: float


def mirror_host(mirror: str) -> str:
    """'http://127.0.0.1:5000/' or '127.0.0.1:5000' -> '127.0.0.1:5000'."""
    m = mirror.split("://", 1)[-1].rstrip("/")
    if "/" in m:
        raise ValueError(f"mirror must be a bare host:port, got {mirror!r}")
    return m


Mirrors = str | dict[str, str]
DEFAULT_REGISTRIES = ("docker.io", "ghcr.io")


def mirror_map(mirror: Mirrors, registries: tuple[str, ...] = DEFAULT_REGISTRIES) -> dict[str, str]:
    """registry -> mirror host:port. A single mirror serves every registry
    (fine for containerd, whose requests carry ?ns=); a dict gives each
    registry its own, e.g. {"docker.io": hub_port, "ghcr.io": ghcr_port}
    for clients that send no ns (skopeo, podman) against a regcache with
    one listener per upstream."""
    if isinstance(mirror, str):
        return dict.fromkeys(registries, mirror_host(mirror))
    return {reg: mirror_host(m) for reg, m in mirror.items()}


def client_env(home: Path, **extra: str) -> dict[str, str]:
    """Minimal environment for a real client: own HOME, dead proxies."""
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "XDG_RUNTIME_DIR": str(home / "xdg-runtime"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local/share"),
        "HTTP_PROXY": DEAD_PROXY, "HTTPS_PROXY": DEAD_PROXY,
        "http_proxy": DEAD_PROXY, "https_proxy": DEAD_PROXY,
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
    }
    (home / "xdg-runtime").mkdir(mode=0o700, exist_ok=True)
    env.update(extra)
    return env


def isolated_argv(argv: list[str], binds: dict[str, Path] | None = None,
                  tmpfs: tuple[str, ...] = TMPFS_DIRS) -> list[str]:
    """argv run in a private mount namespace (needs root, which CI is).

    binds maps an existing host directory (e.g. /etc/containers) to one of
    ours that is bound over it. A bind target missing on the host is skipped
    (creating it would itself change the host); callers also pass flags that
    move the state, so the bind is a second line of defence.
    The final command replaces the shell (exec), so the pid of the returned
    command line is the pid of the client itself.
    """
    lines = ["set -eu"]
    for d in tmpfs:
        lines.append(f"mount -t tmpfs -o mode=755 regcache-test {shlex.quote(d)}")
    for target, source in (binds or {}).items():
        if os.path.isdir(target):
            lines.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(target)}")
    lines.append('exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", "\n".join(lines), "sh", *argv]


async def run(argv: list[str], *, env: dict[str, str], timeout: float = 120,
              check: bool = True, stdin: bytes | None = None,
              context: str = "") -> Result:
    """Run argv to completion; raise ClientError (with all output and
    `context`, e.g. a daemon log tail) on failure or timeout."""
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise ClientError(_describe(argv, None, out, err, context, f"timed out after {timeout}s"))
    res = Result(tuple(argv), proc.returncode or 0, out.decode(errors="replace"),
                 err.decode(errors="replace"), time.monotonic() - t0)
    if check and proc.returncode != 0:
        raise ClientError(_describe(argv, proc.returncode, out, err, context))
    return res


def _describe(argv: list[str], rc: int | None, out: bytes, err: bytes,
              context: str, why: str = "") -> str:
    parts = [f"command failed ({why or f'exit {rc}'}): {shlex.join(argv)}",
             f"--- stdout ---\n{out.decode(errors='replace')[-4000:]}",
             f"--- stderr ---\n{err.decode(errors='replace')[-4000:]}"]
    if context:
        parts.append(context)
    return "\n".join(parts)


class Daemon:
    """A daemon process we started; stopped only by its own pid."""

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.env, self.log = name, argv, env, log
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        logf = await asyncio.to_thread(open, self.log, "ab")
        with logf:
            # start_new_session: a Ctrl-C in the test runner must not reach
            # the daemon before we have stopped it in order.
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, env=self.env, stdin=asyncio.subprocess.DEVNULL,
                stdout=logf, stderr=logf, start_new_session=True,
            )

    async def wait_for_socket(self, path: Path, timeout: float = 30) -> None:
        """Until `path` is a unix socket that accepts connections."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.returncode is not None:
                raise ClientError(f"{self.name} exited with {self.proc.returncode}\n{self.log_tail()}")
            if path.exists() and await _can_connect(path):
                return
            await asyncio.sleep(0.05)
        raise ClientError(f"{self.name}: no socket {path} after {timeout}s\n{self.log_tail()}")

    async def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            return await self.proc.wait()

    def log_tail(self, n: int = 60) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return f"--- {self.name} log: (none) ---"
        return f"--- {self.name} log tail ({self.log}) ---\n" + "\n".join(lines[-n:])


async def _can_connect(path: Path) -> bool:
    try:
        _, w = await asyncio.open_unix_connection(str(path))
    except OSError:
        return False
    w.close()
    try:
        await w.wait_closed()
    except OSError:
        pass
    return True


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def short_dir(prefix: str) -> Path:
    """A fresh directory with a short path for sockets and runtime state.
    A unix socket path must fit in sun_path (108 bytes) and pytest's
    tmp_path plus a long test name does not (measured: dockerd's own
    containerd then never comes up, "dial unix ...: timeout")."""
    return Path(tempfile.mkdtemp(prefix=f"rc-{prefix}-", dir="/tmp"))


async def remove_dir(path: Path) -> None:
    await asyncio.to_thread(shutil.rmtree, path, True)
