"""Manifest media types and content negotiation (wire-protocol.md 4.2)."""

from __future__ import annotations

import json

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

INDEX_TYPES = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
MANIFEST_TYPES = (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX)

# Sent upstream on every manifest request: with anything less Docker Hub may answer a
# schema1 or single-platform manifest (content-negotiation.md, wire-protocol.md 4.2).
UPSTREAM_ACCEPT = ", ".join(MANIFEST_TYPES)


def parse_accept(header_lines: list[str]) -> frozenset[str]:
    """Media types from every `Accept` line (dockerd's legacy engine sends four lines)."""
    types = set()
    for line in header_lines:
        for item in line.split(","):
            media_type = item.split(";", 1)[0].strip().lower()
            if media_type:
                types.add(media_type)
    return frozenset(types)


def acceptable(media_type: str, accepted: frozenset[str]) -> bool:
    """Whether a client with this Accept set can take `media_type`.

    No Accept header, `*/*` or `application/*` take anything. Docker schema2 manifests are
    served whatever the Accept, as distribution does (manifests.go); OCI types and lists need
    to be asked for, otherwise the client gets what upstream returns for its own Accept.
    """
    if not accepted or "*/*" in accepted or "application/*" in accepted:
        return True
    return media_type in accepted or media_type == DOCKER_MANIFEST


def referenced_digests(body: bytes) -> tuple[list[str], list[str]]:
    """(child manifest digests, blob digests) a manifest refers to; empty if unparsable."""
    try:
        doc = json.loads(body)
    except ValueError:
        return [], []
    if not isinstance(doc, dict):
        return [], []
    children = [m.get("digest") for m in doc.get("manifests") or [] if isinstance(m, dict)]
    blobs = [l.get("digest") for l in doc.get("layers") or [] if isinstance(l, dict)]
    config = doc.get("config")
    if isinstance(config, dict):
        blobs.append(config.get("digest"))
    return [d for d in children if isinstance(d, str)], [d for d in blobs if isinstance(d, str)]
