"""Repository names, tags and digests: parsing and validation.

Grammar from distribution/reference `regexp.go` and the OCI distribution-spec (see
wire-protocol.md section 6). Pure functions, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from regcache.errors import RegistryError

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
# Algorithms we can verify, with their hex length.
DIGEST_ALGORITHMS = {"sha256": 64, "sha512": 128}
_DIGEST_SHAPE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
MAX_NAME_LENGTH = 255


@dataclass(frozen=True, slots=True)
class Digest:
    """A content digest such as `sha256:<64 hex>`."""

    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def parse_digest(text: str) -> Digest:
    """Parse and validate a digest, raising DIGEST_INVALID."""
    if not _DIGEST_SHAPE.fullmatch(text):
        raise RegistryError("DIGEST_INVALID", "invalid digest", detail={"digest": text[:200]})
    algorithm, _, hex_part = text.partition(":")
    expected_len = DIGEST_ALGORITHMS.get(algorithm)
    if expected_len is None:
        raise RegistryError("DIGEST_INVALID", f"unsupported digest algorithm {algorithm!r}")
    if len(hex_part) != expected_len or not re.fullmatch(r"[a-f0-9]+", hex_part):
        raise RegistryError(
            "DIGEST_INVALID", f"{algorithm} digest must be {expected_len} lowercase hex characters"
        )
    return Digest(algorithm, hex_part)


def looks_like_digest(reference: str) -> bool:
    """A manifest reference containing ':' is a digest (tags cannot contain ':')."""
    return ":" in reference


def validate_name(name: str) -> str:
    """Validate a repository name, raising NAME_INVALID."""
    if len(name) > MAX_NAME_LENGTH or not NAME_RE.fullmatch(name):
        raise RegistryError("NAME_INVALID", "invalid repository name", detail={"name": name[:300]})
    return name


def validate_tag(tag: str) -> str:
    """Validate a tag, raising TAG_INVALID."""
    if not TAG_RE.fullmatch(tag):
        raise RegistryError("TAG_INVALID", "invalid tag", detail={"tag": tag[:200]})
    return tag


def normalize_docker_hub_name(name: str) -> str:
    """Docker Hub needs `library/` for official images, in paths and token scopes (section 6)."""
    return name if "/" in name else f"library/{name}"
