"""HTTP Range for blobs (RFC 9110 section 14), as registry clients use it.

Clients send only single open-ended ranges (`bytes=N-`, wire-protocol.md 4.8); `bytes=N-M`
and suffix ranges (`bytes=-K`) are accepted too. Anything else, or a range starting past
the end, is RANGE_INVALID (416) with `Content-Range: bytes */<size>`, as Go's ServeContent.
"""

from __future__ import annotations

import re

from regcache.errors import RegistryError

_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end_exclusive) for a Range header, None for no header."""
    if header is None:
        return None
    match = _RANGE_RE.fullmatch(header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        raise _unsatisfiable(size, "malformed or multiple ranges are not supported")
    first, last = match.group(1), match.group(2)
    if not first:  # suffix: the last N bytes
        count = int(last)
        if count == 0:
            raise _unsatisfiable(size, "empty suffix range")
        return max(0, size - count), size
    start = int(first)
    end = size if not last else min(int(last) + 1, size)
    if start >= size or (last and int(last) < start):
        raise _unsatisfiable(size, "range not satisfiable")
    return start, end


def _unsatisfiable(size: int, message: str) -> RegistryError:
    return RegistryError("RANGE_INVALID", message, headers={"Content-Range": f"bytes */{size}"})


def content_range(start: int, end: int, size: int) -> str:
    return f"bytes {start}-{end - 1}/{size}"
