"""podman pulling through a mirror registries.conf (c/image, like skopeo).

Each podman command runs in a private mount namespace with our own
/etc/containers (policy.json, registries.conf, containers.conf) bound over
the host's, since podman keeps network locks in /etc/containers/networks and
/etc/cni/net.d and a blob-info cache in /var/lib/containers; its own storage
is under --root/--runroot/--tmpdir in our workdir (vfs driver).
CONTAINERS_REGISTRIES_CONF points at the mirror registries.conf too.

Wire: the same as skopeo (containers/image 5.23.1): /v2/ ping, GET by tag,
six Accept lines, no ?ns=. On failure podman 4.3 retries a pull 3 times
with a 1 s pause (it has no --retry flag), so a failing pull takes ~3 s.

Usage:
    async with Podman(tmp_path / "podman", mirror="127.0.0.1:5000") as pm:
        res = await pm.pull("docker.io/library/alpine:3")
        res.digest, res.image_id, res.repo_digests
        out = await pm.run("docker.io/library/busybox:latest", "echo", "hi")
    # leaving the block removes the short runroot and run's cgroup parent
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Self

from .client_cgroup import remove_cgroup
from .client_proc import (
    Mirrors,
    Result,
    client_env,
    isolated_argv,
    mirror_map,
    remove_dir,
    run,
    short_dir,
)
from .client_result import PullResult
from .client_skopeo import write_etc_containers


class Podman:
    def __init__(self, workdir: Path, mirror: Mirrors, *, timeout: float = 120) -> None:
        """mirror: "127.0.0.1:PORT" for docker.io and ghcr.io, or a dict
        registry -> host:port (podman sends no ?ns=, like skopeo)."""
        self.workdir = workdir
        self.mirrors = mirror_map(mirror)
        self.timeout = timeout
        self.cgroup_parent = f"regcache-test-{uuid.uuid4().hex[:12]}"
        self.etc = workdir / "etc-containers"
        self.registries_conf = write_etc_containers(self.etc, self.mirrors)
        self.etc_cni = workdir / "etc-cni"
        self.etc_cni.mkdir(exist_ok=True)
        for d in ("root", "tmp", "networks"):
            (workdir / d).mkdir(exist_ok=True)
        # podman refuses a runroot longer than 50 characters.
        self.runroot = short_dir("podman")
        self.containers_conf = self.etc / "containers.conf"
        self.containers_conf.write_text(
            "[engine]\n"
            'events_logger = "none"\n'
            'cgroup_manager = "cgroupfs"\n'
            f'tmp_dir = "{workdir}/tmp"\n'
            "[network]\n"
            'network_backend = "netavark"\n'
            f'network_config_dir = "{workdir}/networks"\n')
        self.env = client_env(
            workdir / "home",
            CONTAINERS_REGISTRIES_CONF=str(self.registries_conf),
            CONTAINERS_CONF=str(self.containers_conf),
            REGISTRY_AUTH_FILE=str(workdir / "auth.json"),
            TMPDIR=str(workdir / "tmp"))
        (workdir / "auth.json").write_text('{"auths": {}}')

    async def podman(self, *args: str, timeout: float | None = None,
                     check: bool = True) -> Result:
        argv = ["podman", "--root", str(self.workdir / "root"),
                "--runroot", str(self.runroot),
                "--tmpdir", str(self.workdir / "tmp"),
                "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs",
                "--events-backend", "none", *args]
        binds = {"/etc/containers": self.etc, "/etc/cni": self.etc_cni}
        return await run(isolated_argv(argv, binds), env=self.env,
                         timeout=timeout or self.timeout, check=check)

    async def pull(self, ref: str, *, arch: str | None = None) -> PullResult:
        """`podman pull REF`; digest is the manifest digest podman recorded
        for the reference (the index for a multi-platform tag)."""
        args = ["pull"]
        if arch:
            args += ["--arch", arch]
        res = await self.podman(*args, ref)
        info = await self.inspect(ref)
        return PullResult(
            client="podman", ref=ref, digest=info["Digest"],
            content=frozenset(["sha256:" + info["Id"],
                               *(d.split("@", 1)[1] for d in info["RepoDigests"])]),
            image_id="sha256:" + info["Id"], repo_digests=tuple(info["RepoDigests"]),
            elapsed=res.elapsed)

    async def inspect(self, ref: str) -> dict:
        res = await self.podman("image", "inspect", "--format", "json", ref)
        return json.loads(res.stdout)[0]

    async def run(self, image: str, *cmd: str) -> str:
        """`podman run --rm --network none` with the ulimits this machine
        needs; never pulls. Returns stdout."""
        res = await self.podman(
            "run", "--rm", "--network", "none", "--pull", "never",
            "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
            "--cgroup-parent", f"/{self.cgroup_parent}", image, *cmd)
        return res.stdout

    async def cleanup(self) -> None:
        """Remove the cgroup parent of `run` and the short runroot."""
        await remove_cgroup(self.cgroup_parent)
        await remove_dir(self.runroot)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cleanup()
