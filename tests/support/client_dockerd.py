"""A private dockerd with `--registry-mirror`, and the docker CLI against it.

Debian 12's dockerd is 20.10: the legacy (graphdriver) pull engine with the
vendored docker/distribution client. It pings `GET /v2/`, sends one `Accept`
line per manifest media type and no `ns`, and uses the mirror only for
docker.io references (wire-protocol.md §1.3). `--storage-driver vfs` works
on any filesystem.

dockerd 20.10 starts and supervises its own containerd (no `--containerd`
given); that containerd lives under our --exec-root/--data-root and is
stopped by dockerd on SIGTERM. We still read its pid file first and, after
dockerd has exited, stop it by that pid if it is somehow still alive.

Isolation: dockerd writes /etc/docker/key.json (moved by daemon.json
"deprecated-key-path"), /run/docker/plugins and its containerd writes
/opt/containerd and (via runc shims) /run/containerd/s, so it runs in a
private mount namespace with tmpfs over /run, /var/lib, /var/tmp and /opt
and our own dir bound over /etc/docker. Containers go into a cgroup parent
of our own that is removed afterwards.

Wire (20.10.24, measured): `GET /v2/` before every pull, HEAD by tag, then
GET by digest; SIX separate Accept lines in random order (Docker v2, Docker
list, OCI manifest, OCI index, and schema1: prettyjws and application/json;
wire-protocol.md's four lines are for newer moby); no ?ns=; blobs by plain
GET with no Accept. `docker pull ghcr.io/...` never reaches the mirror.
Start to API ~0.2-0.5 s, stop ~1 s (dockerd waits for its containerd).

Usage:
    async with Dockerd(tmp_path / "dockerd", mirror="127.0.0.1:5000") as d:
        res = await d.pull("alpine:3")          # docker.io/library/alpine:3
        res.digest, res.image_id, res.repo_digests
        out = await d.run("busybox:latest", "echo", "hi")   # --network none
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Self

from .client_cgroup import remove_cgroup
from .client_proc import (
    Daemon,
    Result,
    client_env,
    isolated_argv,
    mirror_host,
    pid_alive,
    remove_dir,
    run,
    short_dir,
)
from .client_result import PullResult

_DIGEST_LINE = re.compile(r"^Digest: (sha256:[0-9a-f]{64})$", re.MULTILINE)


def docker_cli() -> str:
    """The CLI from Debian's docker.io (same version as the daemon) when
    present; else whatever `docker` is on PATH (API version is negotiated)."""
    return "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else (shutil.which("docker") or "docker")


class Dockerd:
    """Async context manager: a private dockerd using `mirror` as its
    registry mirror."""

    def __init__(self, workdir: Path, mirror: str, *, timeout: float = 120,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.mirror = mirror_host(mirror)
        self.timeout = timeout
        self.run_dir = short_dir("dockerd")  # sockets: see short_dir
        self.sock = self.run_dir / "docker.sock"
        self.exec_root = self.run_dir / "exec"
        self.cgroup_parent = f"regcache-test-{uuid.uuid4().hex[:12]}"
        self.etc = workdir / "etc-docker"
        self.etc.mkdir(parents=True, exist_ok=True)
        self.daemon_json = self.etc / "daemon.json"
        self.daemon_json.write_text(json.dumps({
            # dockerd 20.10 has no flag for the trust key, only this key.
            "deprecated-key-path": str(self.etc / "key.json"),
        }))
        self.env = client_env(workdir / "home", DOCKER_CONFIG=str(workdir / "home/.docker"))
        argv = [
            "dockerd", "--config-file", str(self.daemon_json),
            "--data-root", str(workdir / "data"), "--exec-root", str(self.exec_root),
            "--pidfile", str(workdir / "docker.pid"), "-H", f"unix://{self.sock}",
            "--registry-mirror", f"http://{self.mirror}",
            "--insecure-registry", self.mirror,
            "--storage-driver", "vfs", "--iptables=false", "--ip6tables=false",
            "--bridge=none", "--ip-masq=false", "--userland-proxy=false",
            "--cgroup-parent", f"/{self.cgroup_parent}", *extra_args,
        ]
        self.daemon = Daemon("dockerd", isolated_argv(argv, {"/etc/docker": self.etc}),
                             env=self.env, log=workdir / "dockerd.log")

    async def __aenter__(self) -> Self:
        await self.daemon.start()
        try:
            await self.daemon.wait_for_socket(self.sock)
            # The socket accepts before the API is fully up; `docker version`
            # succeeds only once the daemon has finished initialising.
            await self._wait_api()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _wait_api(self, timeout: float = 30) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            res = await self.docker("version", "--format", "{{.Server.Version}}", check=False)
            if res.returncode == 0:
                return
            if loop.time() > deadline:
                raise TimeoutError(f"dockerd API not up:\n{res.stderr}\n{self.daemon.log_tail()}")
            await asyncio.sleep(0.1)

    def _containerd_pid(self) -> int | None:
        try:
            return int((self.exec_root / "containerd/containerd.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    async def stop(self) -> None:
        """dockerd first (it stops its containerd), then its containerd by
        pid if still alive, then our cgroup parent."""
        ctd_pid = self._containerd_pid()
        await self.daemon.stop()
        if ctd_pid is not None and pid_alive(ctd_pid):
            os.kill(ctd_pid, 15)
            for _ in range(100):
                if not pid_alive(ctd_pid):
                    break
                await asyncio.sleep(0.1)
            else:
                os.kill(ctd_pid, 9)
        await remove_cgroup(self.cgroup_parent)
        await remove_dir(self.run_dir)

    async def docker(self, *args: str, check: bool = True,
                     timeout: float | None = None) -> Result:
        return await run([docker_cli(), "-H", f"unix://{self.sock}", *args],
                         env=self.env, timeout=timeout or self.timeout, check=check,
                         context=self.daemon.log_tail())

    async def pull(self, ref: str) -> PullResult:
        """`docker pull REF`; digest is the one dockerd reports ("Digest:"),
        image_id the config digest, repo_digests from `docker image inspect`."""
        res = await self.docker("pull", ref)
        m = _DIGEST_LINE.search(res.stdout)
        if not m:
            raise AssertionError(f"no Digest line in docker pull output:\n{res.stdout}")
        info = await self.inspect(ref)
        return PullResult(
            client="dockerd", ref=ref, digest=m.group(1),
            content=frozenset([info["Id"], *(d.split("@", 1)[1] for d in info["RepoDigests"])]),
            image_id=info["Id"], repo_digests=tuple(info["RepoDigests"]),
            elapsed=res.elapsed)

    async def inspect(self, ref: str) -> dict:
        res = await self.docker("image", "inspect", "--format", "{{json .}}", ref)
        return json.loads(res.stdout)

    async def run(self, image: str, *cmd: str) -> str:
        """`docker run --rm --network none IMAGE CMD...`; returns stdout.
        --pull never: a run must not fetch anything behind the test's back."""
        res = await self.docker("run", "--rm", "--network", "none", "--pull", "never",
                                image, *cmd)
        return res.stdout
