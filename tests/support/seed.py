"""What the real upstreams are seeded with: a fixed catalog of generated images.

hub flavor (stands for Docker Hub):
  library/hello:latest     single-arch Docker schema2: busybox + small /etc layer
  library/layers:latest    single-arch Docker schema2, 4 layers: busybox, /etc,
                           a big random layer (`big_layer_size`, default 4 MiB), 64 KiB random
  library/multi:latest     Docker manifest list: linux/amd64 + linux/arm64/v8
  library/multioci:latest  OCI index: linux/amd64 + linux/arm64/v8
  private/app:1            single-arch Docker schema2; pull needs the upstream credentials
ghcr flavor (stands for ghcr.io):
  org/app:v1               single-arch OCI manifest
  org/multi:latest         OCI index: linux/amd64 + linux/arm64/v8
  private/app:1            single-arch OCI manifest; pull needs the upstream credentials

Every image runs `/bin/busybox echo "hello from regcache"` (arm64 variants reuse the
amd64 busybox layer: only amd64 ever runs here, the arm64 config just says arm64).
Each platform has its own small /etc layer, so the blob sets of the platforms differ
(a single-platform pull must not fetch the other platform's layer); the busybox layer
is shared by every image, like a common base layer.
"""

from __future__ import annotations

from .images import Image, Index, build_image, build_index, busybox_layer, etc_layer, random_layer

DEFAULT_BIG_LAYER_SIZE = 4 * 1024 * 1024


def _multi(name: str, *, oci: bool) -> Index:
    return build_index([
        build_image([busybox_layer(), etc_layer(f"{name} linux/amd64")], oci=oci),
        build_image([busybox_layer(), etc_layer(f"{name} linux/arm64")], oci=oci,
                    arch="arm64", variant="v8"),
    ], oci=oci)


def _single(name: str, *, oci: bool) -> Image:
    return build_image([busybox_layer(), etc_layer(name)], oci=oci)


def catalog(flavor: str, big_layer_size: int = DEFAULT_BIG_LAYER_SIZE) -> dict[str, Image | Index]:
    """`repo:tag` -> image, in push order."""
    if flavor == "ghcr":
        return {
            "org/app:v1": _single("org/app:v1", oci=True),
            "org/multi:latest": _multi("org/multi:latest", oci=True),
            "private/app:1": _single("ghcr private/app:1", oci=True),
        }
    return {
        "library/hello:latest": _single("library/hello:latest", oci=False),
        "library/layers:latest": build_image([
            busybox_layer(),
            etc_layer("library/layers:latest"),
            random_layer(big_layer_size, seed="layers-big", path="/data/big.bin"),
            random_layer(64 * 1024, seed="layers-small", path="/data/small.bin"),
        ]),
        "library/multi:latest": _multi("library/multi:latest", oci=False),
        "library/multioci:latest": _multi("library/multioci:latest", oci=True),
        "private/app:1": _single("hub private/app:1", oci=False),
    }
