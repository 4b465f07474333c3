"""One upstream download of a blob, shared by every client that wants it while it runs.

A `BlobFill` reads the upstream body once, hashes it, keeps the most recent bytes in a
small in-memory window and writes them to a temp file in the store. Any number of
subscribers stream from it at once: from the window when they keep up, from the temp file
(through their own file descriptor) when they fall behind, and they wait for new bytes
when they are ahead. So a late joiner starts at once with the bytes already there, and a
`Range: bytes=N-` on a miss is answered without waiting for the whole blob.

Policy:
- The fill runs in its own task, independent of clients; it ends when the body ends, on
  an error, or after `fill_timeout` (style.md C8).
- The blob is committed (renamed into the store) only when size and digest match.
- Subscribers never send the blob's last byte before the digest is verified; on a failure
  they raise, the handler drops the connection, and no client sees a clean short blob.
- A full disk does not fail the clients: the fill drops its temp file and goes on in
  memory only, holding each chunk until every subscriber has it.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
from collections import deque
from pathlib import Path
from contextlib import AbstractAsyncContextManager
from typing import AsyncIterator, Callable

from regcache.errors import DigestMismatch, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from regcache.reference import Digest
from regcache.store import BlobWriter
from regcache.upstream.client import BlobStream

log = logging.getLogger("regcache.fill")

# Opens the upstream body: `lambda: client.open_blob(repo, digest)`.
StreamOpener = Callable[[], AbstractAsyncContextManager[BlobStream]]

READ_CHUNK = 1024 * 1024
# Recent bytes kept in memory per fill, for subscribers that keep up; the others pread the
# temp file (page cache). Per fill, so it multiplies with concurrent cold blobs: 2 MiB
# instead of 8 took the load run's peak RSS from 226-269 to 177-209 MiB (docs/load.md).
WINDOW_BYTES = 2 * 1024 * 1024


class FillAborted(Exception):
    """The fill failed after subscribers started; their connections must be dropped."""


class BlobFill:
    """A running download; see the module docstring."""

    def __init__(self, digest: Digest, writer: BlobWriter | None,
                 on_finish: Callable[["BlobFill"], None]) -> None:
        self.digest = digest
        self.size: int | None = None
        self.received = 0
        self.on_disk = 0
        self.verified = False
        self.committed_path: Path | None = None
        self.error: BaseException | None = None
        self.subscribers = 0
        self._writer = writer
        self._window: deque[tuple[int, bytes]] = deque()
        self._window_bytes = 0
        self._positions: dict[int, int] = {}
        self._changed = asyncio.Event()
        self._started = asyncio.get_running_loop().create_future()
        self._on_finish = on_finish
        self.task: asyncio.Task[None] | None = None

    # -- the producer -------------------------------------------------------------------
    def start(self, open_stream: Callable[[], StreamOpener], timeout: float) -> None:
        self.task = asyncio.create_task(self._run(open_stream, timeout), name=f"fill {self.digest}")

    async def _run(self, open_stream: Callable[[], StreamOpener], timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                async with open_stream() as stream:
                    await self._consume(stream)
        except TimeoutError:
            # fill_timeout: an UpstreamError, so that waiting requests get a mapped 504.
            self._fail(UpstreamTimeout(f"fill did not finish within {timeout:g} s"))
        except asyncio.CancelledError:  # shutdown
            self._fail(UpstreamUnavailable("fill cancelled"))
            raise
        except BaseException as exc:
            self._fail(exc)
            if not isinstance(exc, (UpstreamError, OSError)):
                log.exception("fill of %s failed", self.digest)
        finally:
            self._on_finish(self)
        if self.error is not None:
            log.warning("fill of %s failed after %d bytes: %s", self.digest, self.received, self.error)

    async def _consume(self, stream: BlobStream) -> None:
        if stream.size is None:
            raise UpstreamUnavailable("upstream did not announce the blob size")
        self.size = stream.size
        self._started.set_result(None)
        hasher = hashlib.new(self.digest.algorithm)
        async for chunk in stream.chunks(READ_CHUNK):
            if self.received + len(chunk) > self.size:
                raise DigestMismatch("upstream sent more bytes than the blob's size")
            hasher.update(chunk)
            self._window.append((self.received, chunk))
            self._window_bytes += len(chunk)
            self.received += len(chunk)
            await self._store_and_trim()
            self._notify()
        if self.received != self.size:
            raise UpstreamUnavailable(f"upstream body ended after {self.received} of {self.size} bytes")
        if hasher.hexdigest() != self.digest.hex:
            raise DigestMismatch(f"upstream bytes do not hash to {self.digest}")
        await self._commit()
        self.verified = True
        self._notify()

    async def _store_and_trim(self) -> None:
        """Write new window bytes to the temp file, then keep the window within bounds."""
        if self._writer is not None and self.on_disk < self.received:
            pending = [c for off, c in self._window if off >= self.on_disk]
            try:
                await asyncio.to_thread(self._write_all, self._writer, pending)
                self.on_disk = self.received
            except OSError as exc:
                self._drop_disk(exc)
        while self._window_bytes > WINDOW_BYTES:
            offset, chunk = self._window[0]
            if offset + len(chunk) > self._droppable_up_to():
                # A subscriber still needs it and it is not on disk: wait for them.
                await self._wait_change()
                continue
            self._window.popleft()
            self._window_bytes -= len(chunk)

    @staticmethod
    def _write_all(writer: BlobWriter, chunks: list[bytes]) -> None:
        for chunk in chunks:
            writer.write(chunk)
        writer.flush()

    def _droppable_up_to(self) -> int:
        """Bytes below this offset may leave memory: on disk, or every subscriber has them."""
        if self._writer is not None:
            return self.on_disk
        return min(self._positions.values(), default=self.received)

    def _drop_disk(self, exc: OSError) -> None:
        level = logging.WARNING if exc.errno in (errno.ENOSPC, errno.EDQUOT) else logging.ERROR
        log.log(level, "cannot store %s (%s); serving it from upstream without caching", self.digest, exc)
        assert self._writer is not None
        self._writer.abort()
        self._writer = None

    async def _commit(self) -> None:
        if self._writer is None:
            return
        try:
            self.committed_path = await asyncio.to_thread(self._writer.commit, self.received)
        except OSError as exc:
            self._drop_disk(exc)

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        if self._writer is not None:
            self._writer.abort()
        if not self._started.done():
            self._started.set_exception(exc if isinstance(exc, Exception) else UpstreamUnavailable(str(exc)))
            self._started.exception()  # retrieved here; waiters re-raise it themselves
        self._notify()

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def _wait_change(self) -> None:
        await self._changed.wait()

    # -- subscribers --------------------------------------------------------------------
    async def wait_started(self) -> int:
        """Wait until upstream answered; return the blob size or raise the upstream error."""
        await asyncio.shield(self._started)
        assert self.size is not None
        return self.size

    def joinable(self) -> bool:
        """Can a new subscriber starting at byte 0 be served by this fill?"""
        if self.error is not None:
            return False
        if self._writer is not None:
            return True
        # Memory only: byte 0 must still be in the window (or nothing has arrived yet).
        return self._window[0][0] == 0 if self._window else self.received == 0

    async def stream(self, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes [start, end) of the blob as they become available.

        Raises FillAborted if the fill fails; never yields the blob's last byte before
        the digest is verified.
        """
        token = id(object())
        self._positions[token] = start
        self.subscribers += 1
        fd = await asyncio.to_thread(self._open_tmp)
        try:
            pos = start
            while pos < end:
                data = await self._next_piece(pos, end, fd)
                if data is None:
                    continue
                pos += len(data)
                self._positions[token] = pos
                if self._writer is None:
                    self._notify()  # the producer may be waiting for us to free memory
                yield data
            if end == self.size:
                await self._until_verified()
        finally:
            self._positions.pop(token, None)
            self.subscribers -= 1
            if fd is not None:
                os.close(fd)
            self._notify()

    async def _until_verified(self) -> None:
        while not self.verified:
            if self.error is not None:
                raise FillAborted(str(self.error)) from self.error
            await self._changed.wait()

    def _open_tmp(self) -> int | None:
        """A descriptor on the fill's file (blocking: call in a thread), or None in memory mode."""
        writer = self._writer
        if self.committed_path is None and writer is None:
            return None
        if self.committed_path is not None:
            paths = [self.committed_path]
        else:
            assert writer is not None
            paths = [writer.tmp_path, writer.store.blob_path(self.digest)]
        for path in paths:
            # The temp file may be renamed into place between our look and the open: then
            # the committed file has the same bytes. Without a descriptor a subscriber that
            # is behind the window would wait forever.
            try:
                return os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
        return None

    async def _next_piece(self, pos: int, end: int, fd: int | None) -> bytes | None:
        """The next bytes at `pos`, or None after waiting for progress."""
        if self.error is not None:
            raise FillAborted(str(self.error)) from self.error
        assert self.size is not None
        limit = min(end, self.size if self.verified else self.size - 1, self.received)
        if pos < limit:
            piece = self._from_window(pos, limit)
            if piece is not None:
                return piece
            if fd is not None and pos < self.on_disk:
                count = min(READ_CHUNK, self.on_disk - pos, limit - pos)
                data = await asyncio.to_thread(os.pread, fd, count, pos)
                if data:
                    return data
            if fd is None:
                # Not in memory and no file to read them from (disk full and this client
                # too slow): waiting would hang, the bytes will not come back.
                raise FillAborted("bytes no longer available (disk full and client too slow)")
        changed = self._changed
        await changed.wait()
        return None

    def _from_window(self, pos: int, limit: int) -> bytes | None:
        for offset, chunk in self._window:
            if offset <= pos < offset + len(chunk):
                return chunk[pos - offset: limit - offset]
        return None


