"""The one result type every client harness returns from a pull."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PullResult:
    """What a real client ended up with after pulling `ref`.

    digest: digest of the manifest the reference resolved to (the index for
        a multi-platform tag; for skopeo without --all, the platform
        manifest it wrote).
    content: every digest the client shows it holds (manifests, config,
        layers) where the client exposes them (skopeo dir/oci layouts,
        `ctr content ls`); for dockerd and podman, the repo digests and the
        image id.
    image_id: the config digest, for engines that have images (dockerd,
        podman, ctr).
    repo_digests: "name@sha256:..." as the engine records them.
    elapsed: wall-clock seconds of the client command (for reports only;
        tests never assert on time).
    """

    client: str
    ref: str
    digest: str
    content: frozenset[str] = field(default_factory=frozenset)
    image_id: str | None = None
    repo_digests: tuple[str, ...] = ()
    elapsed: float = 0.0
