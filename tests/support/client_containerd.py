"""A private containerd daemon and `ctr image pull --hosts-dir` through a mirror.

This is the pull path of Docker >= 29 DinD and BuildKit: containerd's
`remotes/docker` resolver. Every registry in `registries` gets
`<hosts>/<registry>/hosts.toml` pointing at ONE mirror host with
capabilities pull+resolve, so requests reach the mirror as
`/v2/<repo>/...?ns=<registry>`. The `server` line (the fallback after the
mirror) is a closed local port, so a fallback never leaves the machine.

The daemon has its own root, state, grpc/ttrpc/debug sockets and opt dir,
the CRI plugin disabled, and runs in a private mount namespace (its runc
shims put sockets in the hard-coded /run/containerd/s).

Wire (containerd 1.6.20, measured): no /v2/ ping; HEAD by tag with ONE
Accept line "<docker v2>, <docker list>, <oci manifest>, <oci index>, */*";
GET by digest with "Accept: <descriptor media type>, */*"; ?ns=<registry>
on every request; Accept-Encoding: gzip (Go's default; the zstd list is
containerd 2.x). A 404 on the HEAD moves on to `server` (closed: fails).

Usage:
    async with Containerd(tmp_path / "ctd", mirror="127.0.0.1:5000") as ctd:
        res = await ctd.pull("docker.io/library/alpine:3")
        res.digest, res.content, res.image_id
        out = await ctd.run("docker.io/library/busybox:latest", "echo", "hi")
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Self

from .client_cgroup import remove_cgroup
from .client_proc import (
    Daemon,
    Mirrors,
    Result,
    client_env,
    isolated_argv,
    mirror_host,
    mirror_map,
    remove_dir,
    run,
    short_dir,
)
from .client_result import PullResult

CLOSED_SERVER = "http://127.0.0.1:9"


def hosts_toml(mirror: str, server: str = CLOSED_SERVER) -> str:
    host = mirror_host(mirror)
    return (f'server = "{server}"\n\n'
            f'[host."http://{host}"]\n'
            '  capabilities = ["pull", "resolve"]\n')


def write_hosts_dir(hosts_dir: Path, mirrors: dict[str, str],
                    server: str = CLOSED_SERVER) -> None:
    """<hosts_dir>/<registry>/hosts.toml for each registry -> mirror host."""
    for reg, host in mirrors.items():
        (hosts_dir / reg).mkdir(parents=True, exist_ok=True)
        (hosts_dir / reg / "hosts.toml").write_text(hosts_toml(host, server))


def config_toml(d: Path, run_dir: Path, level: str = "info") -> str:
    return f"""version = 2
root = "{d}/root"
state = "{run_dir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{run_dir}/containerd.sock"
[ttrpc]
  address = "{run_dir}/containerd.sock.ttrpc"
[debug]
  address = "{run_dir}/debug.sock"
  level = "{level}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"""


class Containerd:
    """Async context manager: a private containerd plus `ctr` helpers."""

    def __init__(self, workdir: Path, mirror: Mirrors, *, namespace: str = "test",
                 server: str = CLOSED_SERVER, snapshotter: str = "native",
                 timeout: float = 120) -> None:
        """mirror: one "127.0.0.1:PORT" for docker.io and ghcr.io (told
        apart by ?ns=), or a dict registry -> host:port."""
        self.workdir = workdir
        self.mirrors = mirror_map(mirror)
        self.namespace = namespace
        self.snapshotter = snapshotter
        self.timeout = timeout
        self.run_dir = short_dir("ctd")  # sockets: see short_dir
        self.sock = self.run_dir / "containerd.sock"
        self.cgroup_parent = f"regcache-test-{uuid.uuid4().hex[:12]}"
        self.hosts_dir = workdir / "hosts"
        workdir.mkdir(parents=True, exist_ok=True)
        write_hosts_dir(self.hosts_dir, self.mirrors, server)
        self.config = workdir / "config.toml"
        self.config.write_text(config_toml(workdir, self.run_dir))
        self.env = client_env(workdir / "home")
        self.daemon = Daemon("containerd",
                             isolated_argv(["containerd", "--config", str(self.config)]),
                             env=self.env, log=workdir / "containerd.log")

    async def __aenter__(self) -> Self:
        await self.daemon.start()
        try:
            await self.daemon.wait_for_socket(self.sock)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.daemon.stop()
        await remove_cgroup(self.cgroup_parent)
        await remove_dir(self.run_dir)

    async def ctr(self, *args: str, timeout: float | None = None) -> Result:
        # ctr runs inside the daemon's mount namespace: `ctr run` makes its
        # stdio fifos under /run/containerd/fifo client-side, and the shim
        # (daemon side) must see them; it also keeps them off the host's /run.
        argv = ["nsenter", f"--mount=/proc/{self.daemon.pid}/ns/mnt",
                "ctr", "-a", str(self.sock), "-n", self.namespace, *args]
        return await run(argv,
                         env=self.env, timeout=timeout or self.timeout,
                         context=self.daemon.log_tail())

    async def pull(self, ref: str, *, platform: str | None = None,
                   all_platforms: bool = False) -> PullResult:
        """`ctr image pull --hosts-dir` (unpacks into the snapshotter).
        ref must be fully qualified: docker.io/library/x:tag, ghcr.io/o/r:tag."""
        args = ["image", "pull", "--hosts-dir", str(self.hosts_dir),
                "--snapshotter", self.snapshotter]
        if platform:
            args += ["--platform", platform]
        if all_platforms:
            args.append("--all-platforms")
        res = await self.ctr(*args, ref)
        digest = await self.image_digest(ref)
        return PullResult(client="ctr", ref=ref, digest=digest,
                          content=frozenset(await self.content_digests()),
                          image_id=await self.config_digest(digest, platform),
                          elapsed=res.elapsed)

    async def images(self) -> dict[str, str]:
        """ref -> digest, from `ctr image ls`."""
        out = (await self.ctr("image", "ls")).stdout.splitlines()[1:]
        return {cols[0]: cols[2] for cols in (line.split() for line in out) if len(cols) > 2}

    async def image_digest(self, ref: str) -> str:
        images = await self.images()
        if ref not in images:
            raise KeyError(f"{ref} not in ctr image ls: {images}")
        return images[ref]

    async def content_digests(self) -> set[str]:
        """Every blob in the content store, from `ctr content ls`."""
        out = (await self.ctr("content", "ls")).stdout.splitlines()[1:]
        return {line.split()[0] for line in out if line.strip()}

    async def content(self, digest: str) -> bytes:
        return (await self.ctr("content", "get", digest)).stdout.encode()

    async def config_digest(self, digest: str, platform: str | None = None) -> str:
        """The config digest of the linux/amd64 (or `platform`) image under
        `digest`, following an index if there is one."""
        os_, _, arch = (platform or "linux/amd64").partition("/")
        doc = json.loads(await self.content(digest))
        if "manifests" in doc:
            child = next(m for m in doc["manifests"]
                         if m.get("platform", {}).get("os") == os_
                         and m.get("platform", {}).get("architecture") == arch)
            doc = json.loads(await self.content(child["digest"]))
        return doc["config"]["digest"]

    async def snapshots(self) -> list[str]:
        out = (await self.ctr("snapshot", "--snapshotter", self.snapshotter, "ls")).stdout
        return [line.split()[0] for line in out.splitlines()[1:] if line.strip()]

    async def run(self, ref: str, *cmd: str) -> str:
        """`ctr run --rm` the (pulled) image; returns its stdout. The task
        gets a fresh, empty network namespace (ctr's default)."""
        cid = "t" + uuid.uuid4().hex[:12]
        res = await self.ctr("run", "--rm", "--snapshotter", self.snapshotter,
                             "--cgroup", f"/{self.cgroup_parent}/{cid}", ref, cid, *cmd)
        return res.stdout
