"""A raw HTTP/1.1 GET over asyncio streams, to see exactly how a response ends.

aiohttp's client hides the difference between "the server finished the body" and "the
connection went away"; the fault tests need it: a blob must never end cleanly short. This
client reads the status line and headers, then the body up to `Content-Length`, and says
whether the body was complete. It hashes as it reads (bodies of 100 MiB x 8 clients are not
kept unless asked) and timestamps the headers and the first body byte.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

READ_SIZE = 1 << 20


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]           # lower-cased names
    length: int = 0                   # body bytes received
    sha256: str = ""                  # "sha256:<hex>" of the received body
    complete: bool = False            # Content-Length bytes arrived (a drop before: False)
    ended_by: str = ""                # "length", "eof" or the exception that ended the read
    body: bytes | None = None         # kept only with keep_body=True
    headers_at: float = 0.0           # time.monotonic() of the end of the headers
    first_byte_at: float | None = None
    done_at: float = 0.0
    chunks: list[int] = field(default_factory=list, repr=False)

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        return int(value) if value is not None else None

    def json(self) -> Any:
        assert self.body is not None, "request with keep_body=True"
        return json.loads(self.body)


async def raw_get(port: int, path: str, headers: dict[str, str] | None = None, *,
                  method: str = "GET", keep_body: bool = False, stop_after: int | None = None,
                  timeout: float = 60.0) -> RawResponse:
    """One request on a fresh connection to 127.0.0.1:port.

    `stop_after`: close the connection after this many body bytes (a client going away).
    Error bodies (status >= 400) are always kept.
    """
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        response = RawResponse(int(status_line.split()[1]), {}, headers_at=time.monotonic())
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                response.headers[name.strip().lower()] = value.strip()
        keep = keep_body or response.status >= 400
        await _read_body(reader, response, method, keep, stop_after, timeout)
        return response
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def _read_body(reader: asyncio.StreamReader, response: RawResponse, method: str,
                     keep: bool, stop_after: int | None, timeout: float) -> None:
    expected = response.content_length
    if method == "HEAD" or response.status in (204, 304):
        expected = 0
    hasher = hashlib.sha256()
    parts: list[bytes] = []
    try:
        while expected is None or response.length < expected:
            want = READ_SIZE if expected is None else min(READ_SIZE, expected - response.length)
            data = await asyncio.wait_for(reader.read(want), timeout)
            if not data:
                response.ended_by = "eof"
                break
            if response.first_byte_at is None:
                response.first_byte_at = time.monotonic()
            response.length += len(data)
            response.chunks.append(len(data))
            hasher.update(data)
            if keep:
                parts.append(data)
            if stop_after is not None and response.length >= stop_after:
                response.ended_by = "client-left"
                break
        else:
            response.ended_by = "length"
    except (ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
        response.ended_by = type(exc).__name__
    response.complete = expected is not None and response.length == expected
    response.sha256 = "sha256:" + hasher.hexdigest()
    response.done_at = time.monotonic()
    if keep:
        response.body = b"".join(parts)
