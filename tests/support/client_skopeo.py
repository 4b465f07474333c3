"""skopeo against a mirror: direct (`docker://127.0.0.1:PORT/...`) and in
mirror mode (`docker://docker.io/...` rewritten by registries.conf).

skopeo reads /etc/containers/{policy.json,registries.conf,registries.d} and
keeps a blob-info cache in /var/lib/containers/cache. Each command runs in a
private mount namespace with our own /etc/containers bound over the host's
(see client_proc.isolated_argv), and with explicit --policy,
--registries-conf, --registries.d and --authfile as well.

Wire (skopeo 1.9.3, containers/image 5.23.1, measured with RecordingProxy):
`GET /v2/` ping per command; manifests by tag with GET (never HEAD); six
separate Accept lines (OCI manifest, Docker v2, schema1 prettyjws and
v1+json, Docker list, OCI index); no ?ns=; `Docker-Distribution-Api-Version`
and `Accept-Encoding: gzip` on every request; blobs with no Accept.

Usage:
    sk = Skopeo(tmp_path / "skopeo", mirror="127.0.0.1:5000")
    res = await sk.copy_to_dir(sk.direct_ref("library/alpine:3"), tmp_path / "out")
    res.digest, res.content
    raw = await sk.inspect_raw("docker://docker.io/library/alpine:3")  # mirror mode
    # skopeo sends no ?ns=: against regcache give each registry its listener
    sk = Skopeo(tmp_path / "sk2", {"docker.io": hub_host, "ghcr.io": ghcr_host})
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from .client_proc import Mirrors, Result, client_env, isolated_argv, mirror_map, run
from .client_result import PullResult

_HEX = re.compile(r"^[0-9a-f]{64}$")

POLICY = {"default": [{"type": "insecureAcceptAnything"}]}


def mirror_registries_conf(mirror: Mirrors) -> str:
    """registries.conf that sends each registry's pulls to an insecure (plain
    HTTP) mirror first (`mirror`: see client_proc.mirror_map). The `location`
    stays the real registry; with the dead proxy in the environment a
    fallback there fails locally. c/image sends no ?ns=, so a mirror that
    serves several registries needs one port per registry."""
    out = ['unqualified-search-registries = ["docker.io"]', 'short-name-mode = "permissive"', ""]
    for reg, host in mirror_map(mirror).items():
        out += ["[[registry]]", f'prefix = "{reg}"', f'location = "{reg}"',
                "[[registry.mirror]]", f'location = "{host}"', "insecure = true", ""]
    return "\n".join(out)


def write_etc_containers(etc: Path, mirror: Mirrors) -> Path:
    """Our own /etc/containers for c/image clients (skopeo, podman), to bind over the host's:
    empty registries.d and registries.conf.d, a policy that accepts every image, and the mirror
    registries.conf, whose path it returns."""
    (etc / "registries.d").mkdir(parents=True, exist_ok=True)
    (etc / "registries.conf.d").mkdir(exist_ok=True)
    (etc / "policy.json").write_text(json.dumps(POLICY))
    registries_conf = etc / "registries.conf"
    registries_conf.write_text(mirror_registries_conf(mirror))
    return registries_conf


class Skopeo:
    def __init__(self, workdir: Path, mirror: Mirrors, *, timeout: float = 120) -> None:
        """mirror: "127.0.0.1:PORT" for docker.io and ghcr.io, or a dict
        registry -> host:port. direct_ref() uses the docker.io one."""
        self.workdir = workdir
        self.mirrors = mirror_map(mirror)
        self.mirror = self.mirrors.get("docker.io") or next(iter(self.mirrors.values()))
        self.timeout = timeout
        self.etc = workdir / "etc-containers"
        self.registries_conf = write_etc_containers(self.etc, self.mirrors)
        self.authfile = workdir / "auth.json"
        self.authfile.write_text('{"auths": {}}')
        self.env = client_env(workdir / "home", REGISTRY_AUTH_FILE=str(self.authfile),
                              CONTAINERS_REGISTRIES_CONF=str(self.registries_conf))

    def direct_ref(self, name_tag: str) -> str:
        """docker:// reference that talks to the mirror directly."""
        return f"docker://{self.mirror}/{name_tag}"

    async def skopeo(self, *args: str, timeout: float | None = None) -> Result:
        # registries.conf comes from CONTAINERS_REGISTRIES_CONF (and the
        # bound /etc/containers); skopeo's --registries-conf flag is hidden.
        (self.workdir / "tmp").mkdir(exist_ok=True)
        argv = ["skopeo", "--policy", str(self.etc / "policy.json"),
                "--registries.d", str(self.etc / "registries.d"),
                "--tmpdir", str(self.workdir / "tmp"), *args]
        return await run(isolated_argv(argv, {"/etc/containers": self.etc}),
                         env=self.env, timeout=timeout or self.timeout)

    def _tls(self, flag: str, ref: str) -> list[str]:
        # Direct refs to 127.0.0.1:PORT are plain HTTP; mirror-mode refs get
        # their "insecure" from registries.conf.
        direct = any(ref.startswith(f"docker://{h}/") for h in self.mirrors.values())
        return [f"--{flag}=false"] if direct else []

    async def copy(self, src: str, dest: str, *, all_: bool = True,
                   override_arch: str | None = None, preserve_digests: bool = False) -> Result:
        args = ["copy", "--retry-times", "0", *self._tls("src-tls-verify", src)]
        if all_:
            args.append("--all")
        if preserve_digests:
            args.append("--preserve-digests")
        if override_arch:
            args = ["--override-arch", override_arch, *args]
        return await self.skopeo(*args, src, dest)

    async def copy_to_dir(self, ref: str, out: Path, *, all_: bool = True,
                          override_arch: str | None = None) -> PullResult:
        """`skopeo copy REF dir:OUT`. digest: the manifest written as
        manifest.json (the index with --all); content: that, every per-
        platform manifest and every blob in OUT."""
        res = await self.copy(ref, f"dir:{out}", all_=all_, override_arch=override_arch)
        return read_dir_layout(ref, out, res.elapsed)

    async def copy_to_oci(self, ref: str, out: Path, tag: str = "latest", *,
                          all_: bool = True, preserve_digests: bool = False) -> PullResult:
        """`skopeo copy REF oci:OUT:TAG`. skopeo converts Docker schema2 to
        OCI when writing oci: (digests change) unless preserve_digests, which
        makes such a copy fail instead."""
        res = await self.copy(ref, f"oci:{out}:{tag}", all_=all_,
                              preserve_digests=preserve_digests)
        return read_oci_layout(ref, out, tag, res.elapsed)

    async def inspect_raw(self, ref: str, *, config: bool = False) -> bytes:
        args = ["inspect", "--raw", "--retry-times", "0", *self._tls("tls-verify", ref)]
        if config:
            args.append("--config")
        res = await self.skopeo(*args, ref)
        return res.stdout.encode()

    async def inspect_digest(self, ref: str) -> str:
        """Digest of the manifest the ref resolves to (sha256 of the raw bytes)."""
        return "sha256:" + hashlib.sha256(await self.inspect_raw(ref)).hexdigest()

    async def list_tags(self, repo_ref: str) -> list[str]:
        res = await self.skopeo("list-tags", "--retry-times", "0",
                                *self._tls("tls-verify", repo_ref), repo_ref)
        return list(json.loads(res.stdout)["Tags"])


def _sha(p: Path) -> str:
    return "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()


def read_dir_layout(ref: str, out: Path, elapsed: float = 0.0) -> PullResult:
    digest = _sha(out / "manifest.json")
    content = {digest}
    for f in out.iterdir():
        if _HEX.match(f.name):
            content.add("sha256:" + f.name)
        elif f.name.endswith(".manifest.json"):
            # per-platform manifests of an --all copy: "<hex>.manifest.json"
            content.add("sha256:" + f.name.removesuffix(".manifest.json"))
    return PullResult(client="skopeo", ref=ref, digest=digest,
                      content=frozenset(content), elapsed=elapsed)


def read_oci_layout(ref: str, out: Path, tag: str, elapsed: float = 0.0) -> PullResult:
    index = json.loads((out / "index.json").read_text())
    digest = next(m["digest"] for m in index["manifests"]
                  if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
    content = {"sha256:" + f.name for f in (out / "blobs/sha256").iterdir()}
    return PullResult(client="skopeo", ref=ref, digest=digest,
                      content=frozenset(content), elapsed=elapsed)
