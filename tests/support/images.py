"""Deterministic container images built in memory: layers, configs, manifests, indexes.

No binary test data lives in the repository: layers are tarballs built here with
fixed metadata (mtime 0, uid/gid 0) and gzipped with gzip mtime 0, so the same
inputs always give the same digests on one machine. The one outside input is the
host's statically linked /bin/busybox (Debian `busybox-static`), which makes the
images runnable by `docker run`, `podman run` and `ctr run`.

The `Image` / `Index` shapes match tests/support/client_images.py so that helpers
written against one work with the other.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import random
import tarfile
from dataclasses import dataclass, field

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

BUSYBOX_PATH = "/bin/busybox"
HELLO_CMD = ("/bin/busybox", "echo", "hello from regcache")
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# path -> (bytes, mode) for a regular file, or (str target, 0) for a symlink.
Files = dict[str, tuple[bytes | str, int]]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True, eq=False)
class Layer:
    blob: bytes          # the gzipped tarball, as stored in the registry
    diff_id: str         # sha256 of the uncompressed tar (goes into the config)

    @property
    def digest(self) -> str:
        return sha256(self.blob)


class _Manifest:
    """What Image and Index share: a manifest's bytes give its digest and size."""

    manifest: bytes  # a dataclass field in each subclass

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    @property
    def size(self) -> int:
        return len(self.manifest)

    @property
    def manifests(self) -> tuple[Image, ...]:
        raise NotImplementedError

    @property
    def content_digests(self) -> set[str]:
        """Every digest a full pull (all platforms) yields: manifests, configs, layers."""
        out = {self.digest}
        for image in self.manifests:
            out |= {image.digest, image.config_digest, *image.layer_digests}
        return out


@dataclass(frozen=True, eq=False)
class Image(_Manifest):
    """One platform image: its manifest bytes plus every blob it references."""

    manifest: bytes
    media_type: str
    blobs: dict[str, bytes]               # digest -> bytes, config and layers
    platform: dict[str, str]              # {"os", "architecture"[, "variant"]}
    config_digest: str
    layer_digests: tuple[str, ...]

    @property
    def config(self) -> bytes:
        return self.blobs[self.config_digest]

    @property
    def platform_name(self) -> str:
        p = self.platform
        return "/".join(x for x in (p["os"], p["architecture"], p.get("variant")) if x)

    @property
    def manifests(self) -> tuple[Image, ...]:
        return (self,)


@dataclass(frozen=True, eq=False)
class Index(_Manifest):
    """A multi-platform image: index (or Docker manifest list) bytes plus its children."""

    manifest: bytes
    media_type: str
    images: tuple[Image, ...] = field(default=())

    @property
    def blobs(self) -> dict[str, bytes]:
        return {d: b for img in self.images for d, b in img.blobs.items()}

    @property
    def manifests(self) -> tuple[Image, ...]:
        return self.images

    def for_platform(self, os_: str, arch: str) -> Image:
        for img in self.images:
            if img.platform["os"] == os_ and img.platform["architecture"] == arch:
                return img
        raise KeyError(f"{os_}/{arch}")

    def platform(self, name: str) -> Image:
        """`index.platform("linux/arm64")`."""
        os_, arch = name.split("/")[:2]
        return self.for_platform(os_, arch)


def tar_layer(files: Files, dirs: dict[str, int] | None = None, *, level: int = 6) -> Layer:
    """A gzipped tar layer. Parent directories of files are created (0755) unless
    `dirs` gives them, with their modes; everything is owned by root, mtime 0."""
    all_dirs = dict.fromkeys(
        (p.strip("/").rsplit("/", 1)[0] for p in files if "/" in p.strip("/")), 0o755)
    for d in list(all_dirs):                     # every ancestor too
        parts = d.split("/")
        for i in range(1, len(parts)):
            all_dirs.setdefault("/".join(parts[:i]), 0o755)
    all_dirs.update({d.strip("/"): m for d, m in (dirs or {}).items()})
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in sorted(all_dirs):
            info = tarfile.TarInfo(d + "/")
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, all_dirs[d], 0
            tar.addfile(info)
        for path in sorted(files):
            content, mode = files[path]
            info = tarfile.TarInfo(path.strip("/"))
            info.mtime = 0
            if isinstance(content, str):
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, content, 0o777
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), mode
                tar.addfile(info, io.BytesIO(content))
    data = raw.getvalue()
    return Layer(blob=gzip.compress(data, compresslevel=level, mtime=0), diff_id=sha256(data))


@functools.cache
def busybox_layer() -> Layer:
    """/bin/busybox plus a few applet symlinks and the usual top-level directories.
    Built once per process (reads ~2 MB from disk; called from fixture setup)."""
    try:
        with open(BUSYBOX_PATH, "rb") as f:
            busybox = f.read()
    except FileNotFoundError:
        raise RuntimeError(f"{BUSYBOX_PATH} is missing: install the Debian package "
                           "busybox-static (listed in .ci/apt-packages.txt)") from None
    files: Files = {"/bin/busybox": (busybox, 0o755)}
    for applet in ("sh", "echo", "cat", "ls", "sleep", "true"):
        files[f"/bin/{applet}"] = ("busybox", 0)
    return tar_layer(files, dirs={"/tmp": 0o1777, "/etc": 0o755, "/root": 0o700,
                                  "/proc": 0o555, "/sys": 0o555, "/dev": 0o755})


def etc_layer(text: str) -> Layer:
    """A small layer with /etc/passwd, /etc/group and /etc/regcache-test (the text)."""
    return tar_layer({
        "/etc/passwd": (b"root:x:0:0:root:/root:/bin/sh\n"
                        b"nobody:x:65534:65534::/:/bin/false\n", 0o644),
        "/etc/group": (b"root:x:0:\nnogroup:x:65534:\n", 0o644),
        "/etc/regcache-test": (text.encode() + b"\n", 0o644),
    })


def random_layer(size: int, seed: int | str, path: str = "/data/blob.bin") -> Layer:
    """A layer holding `size` pseudo-random (incompressible) bytes, fixed by `seed`.
    gzip level 1: the data does not compress anyway and this keeps seeding fast."""
    data = random.Random(str(seed)).randbytes(size)
    return tar_layer({path: (data, 0o644)}, level=1)


def build_image(layers: list[Layer], *, arch: str = "amd64", os_: str = "linux",
                variant: str | None = None, oci: bool = False,
                cmd: tuple[str, ...] = HELLO_CMD, label: str = "") -> Image:
    """An image manifest (Docker schema2, or OCI with `oci=True`) over `layers`,
    with a valid image config whose diff_ids match the layers."""
    platform = {"architecture": arch, "os": os_}
    if variant:
        platform["variant"] = variant
    config = canonical_json({
        **platform,
        "created": "1970-01-01T00:00:00Z",
        "config": {"Env": [PATH_ENV], "Cmd": list(cmd), "WorkingDir": "/",
                   **({"Labels": {"org.regcache.test": label}} if label else {})},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": "1970-01-01T00:00:00Z",
                     "created_by": "regcache tests/support/images.py"} for _ in layers],
    })
    mt, ct, lt = ((OCI_MANIFEST, OCI_CONFIG, OCI_LAYER) if oci
                  else (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER))
    manifest = canonical_json({
        "schemaVersion": 2,
        "mediaType": mt,
        "config": {"mediaType": ct, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": lt, "digest": layer.digest, "size": len(layer.blob)}
                   for layer in layers],
    })
    blobs = {sha256(config): config}
    blobs.update((layer.digest, layer.blob) for layer in layers)
    return Image(manifest=manifest, media_type=mt, blobs=blobs, platform=platform,
                 config_digest=sha256(config),
                 layer_digests=tuple(layer.digest for layer in layers))


def build_index(images: list[Image], *, oci: bool = False) -> Index:
    """An OCI index (`oci=True`) or a Docker manifest list over `images`."""
    mt = OCI_INDEX if oci else DOCKER_LIST
    body = canonical_json({
        "schemaVersion": 2,
        "mediaType": mt,
        "manifests": [{"mediaType": i.media_type, "digest": i.digest, "size": i.size,
                       "platform": i.platform} for i in images],
    })
    return Index(manifest=body, media_type=mt, images=tuple(images))
