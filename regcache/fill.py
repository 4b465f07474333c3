"""One upstream download of a blob, shared by every client that wants it while it runs.

A `BlobFill` reads the upstream body once into a small in-memory window. Subscribers
stream from that window as soon as the bytes arrive; behind them, a worker thread hashes
the bytes and writes them to a temp file in the store (both release the GIL, so this runs
beside the event loop). Any number of subscribers stream at once: from
the window when they keep up, from the temp file (through their own file descriptor) when
they fall behind, and they wait for new bytes when they are ahead. So a late joiner starts
at once with the bytes already there, and a `Range: bytes=N-` on a miss is answered
without waiting for the whole blob.

Why: hashing on the event loop and awaiting each chunk's disk write before the clients
saw it serialized hash, write and send, and put a thread hop before the first byte; with
them overlapped a cold miss ran about 30% faster in the bench (docs/benchmarks.md).

Policy:
- The fill runs in its own task, independent of clients; it ends when the body ends, on
  an error, or after `fill_timeout` (style.md C8).
- The blob is committed (renamed into the store) only when size and digest match.
- Subscribers never send the blob's last byte before the digest is verified; on a failure
  they raise, the handler drops the connection, and no client sees a clean short blob.
- A full disk does not fail the clients: the fill drops its temp file and goes on in
  memory only, holding each chunk until every subscriber has it.
- Memory is bounded: the upstream is read only while the window (bytes not yet hashed and
  written, plus recent bytes kept for subscribers) is below its share of FILLS_MEMORY_BYTES.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
from collections import deque
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import NamedTuple

from regcache.errors import (
    DigestMismatch,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from regcache.reference import Digest
from regcache.store import BlobWriter
from regcache.upstream.client import BlobStream

log = logging.getLogger("regcache.fill")

# Opens the upstream body: `lambda: client.open_blob(repo, digest)`.
StreamOpener = Callable[[], AbstractAsyncContextManager[BlobStream]]

READ_CHUNK = 1024 * 1024
# Memory per fill ("window"): recent bytes kept for subscribers that keep up (the others
# pread the temp file, page cache), plus bytes the hash-and-write thread has not done yet
# (it may lag the upstream by that much, so the clients are not held to the disk's pace
# chunk by chunk); in memory-only mode, bytes a slow subscriber has not had yet. The
# upstream is read only while the window is below the fill's limit: all running fills
# share FILLS_MEMORY_BYTES, each gets between MIN and MAX_WINDOW_BYTES. A quarter of the
# limit is kept for subscribers and handed to the thread at once (one wake-up per batch).
# With 2 MiB per fill regardless, the 200-client load run peaked at 177-209 MiB; 8 MiB for
# every fill took it past 350 MiB (docs/load.md).
FILLS_MEMORY_BYTES = 32 * 1024 * 1024
MIN_WINDOW_BYTES = 2 * 1024 * 1024
MAX_WINDOW_BYTES = 8 * 1024 * 1024
# Most bytes handed to a subscriber's sender at once, from memory and from the file.
BATCH_BYTES = 4 * 1024 * 1024
FILE_RANGE_BYTES = 64 * 1024 * 1024

_pool: ThreadPoolExecutor | None = None
_running_fills = 0


def _fill_ended() -> None:
    global _running_fills
    _running_fills -= 1


def _abort_unused(creating: asyncio.Future[BlobWriter | None]) -> None:
    """The fill ended before it took its temp file (upstream error): remove the file,
    now or when its creation is done."""
    def abort(future: asyncio.Future[BlobWriter | None]) -> None:
        if not future.cancelled() and future.exception() is None and (writer := future.result()) is not None:
            writer.abort()
    creating.add_done_callback(abort)


def _window_limit() -> int:
    share = FILLS_MEMORY_BYTES // max(_running_fills, 1)
    return max(MIN_WINDOW_BYTES, min(MAX_WINDOW_BYTES, share))


def _workers() -> ThreadPoolExecutor:
    """Threads for hashing, writing and committing (not the default executor, which
    aiohttp and the store share); created on first use, nothing at import time."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(8, thread_name_prefix="regcache-fill")
    return _pool


class FileRange(NamedTuple):
    """Bytes of the blob to read from the fill's file: `length` bytes at `offset` of `fd`
    (the subscriber's descriptor, valid until its stream ends)."""

    fd: int
    offset: int
    length: int


class FillAborted(Exception):
    """The fill failed after subscribers started; their connections must be dropped."""


class BlobFill:
    """A running download; see the module docstring."""

    def __init__(self, digest: Digest, new_writer: Callable[[], BlobWriter | None] | None,
                 on_finish: Callable[[BlobFill], None]) -> None:
        self.digest = digest
        self.size: int | None = None
        self.received = 0
        self.on_disk = 0  # bytes in the temp file; kept after a disk failure (open fds still read it)
        self.verified = False
        self.committed_path: Path | None = None
        self.error: BaseException | None = None
        self.subscribers = 0
        # The temp file is created in a worker thread while the upstream request is on its
        # way: a file creation is a blocking call, kept off the event loop.
        self._new_writer = new_writer
        self._writer: BlobWriter | None = None
        self._hasher = hashlib.new(digest.algorithm)
        # The store lane: bytes handed to the worker thread that hashes and writes them.
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._hashed = 0  # bytes hashed (and written, unless in memory-only mode)
        self._storing: asyncio.Future[OSError | None] | None = None
        self._worker_error: BaseException | None = None
        self._body_done = False
        self._window: deque[tuple[int, bytes]] = deque()
        self._window_bytes = 0
        self._positions: dict[int, int] = {}
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._started = self._loop.create_future()
        self._on_finish = on_finish
        self.task: asyncio.Task[None] | None = None

    # -- the producer -------------------------------------------------------------------
    def start(self, open_stream: StreamOpener, timeout: float) -> None:
        global _running_fills
        _running_fills += 1
        self.task = asyncio.create_task(self._run(open_stream, timeout), name=f"fill {self.digest}")

    async def _run(self, open_stream: StreamOpener, timeout: float) -> None:
        creating = self._loop.run_in_executor(_workers(), self._new_writer) if self._new_writer else None
        try:
            async with asyncio.timeout(timeout):
                async with open_stream() as stream:
                    if creating is not None:
                        self._writer = await asyncio.shield(creating)  # its file is ours to remove
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
            try:
                if creating is not None and self._writer is None:
                    _abort_unused(creating)
                await self._settle()
            finally:
                _fill_ended()
                self._on_finish(self)
        if self.error is not None:
            log.warning("fill of %s failed after %d bytes: %s", self.digest, self.received, self.error)

    async def _consume(self, stream: BlobStream) -> None:
        if stream.size is None:
            raise UpstreamUnavailable("upstream did not announce the blob size")
        self.size = stream.size
        self._started.set_result(None)
        async for chunk in stream.chunks(READ_CHUNK):
            if self.received + len(chunk) > self.size:
                raise DigestMismatch("upstream sent more bytes than the blob's size")
            self._window.append((self.received, chunk))
            self._window_bytes += len(chunk)
            self.received += len(chunk)
            self._pending.append(chunk)
            self._pending_bytes += len(chunk)
            self._kick()
            self._notify()
            # aiohttp's read returns without yielding while bytes are buffered: let the
            # subscribers (and a request waiting for the first bytes) run between chunks.
            await asyncio.sleep(0)
            while self._window_bytes >= _window_limit():
                await self._wait_change()  # the store lane or a memory-mode subscriber is behind
                self._raise_worker_error()
        if self.received != self.size:
            raise UpstreamUnavailable(f"upstream body ended after {self.received} of {self.size} bytes")
        self._body_done = True
        self._kick()
        while self._hashed < self.received:
            await self._wait_change()
            self._raise_worker_error()
        if self._hasher.hexdigest() != self.digest.hex:
            raise DigestMismatch(f"upstream bytes do not hash to {self.digest}")
        await self._commit()
        self.verified = True
        self._notify()

    def _kick(self) -> None:
        """Hand the pending bytes to the worker thread: in batches of a quarter of the
        window (one thread wake-up each, not one per chunk), the rest at the end; one batch
        at a time."""
        if (self._storing is not None or not self._pending or self.error is not None
                or (self._pending_bytes < _window_limit() // 4 and not self._body_done)):
            return
        batch, size = self._pending, self._pending_bytes
        self._pending, self._pending_bytes = [], 0
        self._storing = self._loop.run_in_executor(_workers(), self._store_batch, batch, self._writer)
        self._storing.add_done_callback(lambda future: self._stored(size, future))

    def _store_batch(self, batch: list[bytes], writer: BlobWriter | None) -> OSError | None:
        """Worker thread: hash every chunk, write them while the disk takes them."""
        error = None
        for chunk in batch:
            self._hasher.update(chunk)
            if writer is not None and error is None:
                try:
                    writer.write(chunk)
                except OSError as exc:
                    error = exc  # go on hashing: the clients still need the verification
        if writer is not None and error is None:
            try:
                writer.flush()
            except OSError as exc:
                error = exc
        return error

    def _stored(self, size: int, future: asyncio.Future[OSError | None]) -> None:
        self._storing = None
        if self.error is not None:
            self._notify()  # _settle is waiting for us
            return
        if future.cancelled() or future.exception() is not None:
            self._worker_error = future.exception() if not future.cancelled() else UpstreamUnavailable("cancelled")
            self._notify()
            return
        self._hashed += size
        write_error = future.result()
        if write_error is not None:
            self._drop_disk(write_error)
        elif self._writer is not None:
            self.on_disk = self._hashed
        self._kick()
        self._trim()
        self._notify()

    def _raise_worker_error(self) -> None:
        if self._worker_error is not None:
            raise self._worker_error

    async def _settle(self) -> None:
        """At the end: let a running batch finish, then drop the temp file of a failed
        fill (the batch may still be writing to it until then)."""
        try:
            if self._storing is not None:
                await asyncio.wait([self._storing])
        finally:
            if self.error is not None:
                self._close_writer()

    def _trim(self) -> None:
        """Let bytes leave memory: those below `_droppable_up_to`, beyond the recent quarter
        of the window."""
        droppable = self._droppable_up_to()
        keep = _window_limit() // 4
        while self._window_bytes > keep:
            offset, chunk = self._window[0]
            if offset + len(chunk) > droppable:
                return
            self._window.popleft()
            self._window_bytes -= len(chunk)

    def _droppable_up_to(self) -> int:
        """Bytes below this offset may leave memory: hashed, and on disk or every
        subscriber has them."""
        if self._writer is not None:
            return self._hashed
        return min(self._hashed, min(self._positions.values(), default=self.received))

    def _drop_disk(self, exc: OSError) -> None:
        level = logging.WARNING if exc.errno in (errno.ENOSPC, errno.EDQUOT) else logging.ERROR
        log.log(level, "cannot store %s (%s); serving it from upstream without caching", self.digest, exc)
        self._close_writer()

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None

    async def _commit(self) -> None:
        if self._writer is None:
            return
        try:
            self.committed_path = await self._loop.run_in_executor(_workers(), self._writer.commit, self.received)
        except OSError as exc:
            self._drop_disk(exc)

    def _fail(self, exc: BaseException) -> None:
        self.error = exc  # _settle drops the temp file once no batch is writing to it
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

    async def stream(self, start: int, end: int,
                     file_ranges: bool = False) -> AsyncGenerator[list[bytes] | FileRange, None]:
        """Bytes [start, end) of the blob as they become available, as lists of chunks
        (everything available at the moment, up to BATCH_BYTES: one hand-over to the
        sender thread per list). Bytes that already left memory are read from the temp
        file here, or with `file_ranges` given as a `FileRange` for the caller to read.

        Raises FillAborted if the fill fails; never yields the blob's last byte before
        the digest is verified.
        """
        token = id(object())
        self._positions[token] = start
        self.subscribers += 1
        # The descriptor for falling behind the window is opened now (the temp file may be
        # dropped later, its bytes then stay readable through it) but not waited for:
        # the first bytes come from memory, without a thread hop before them.
        opening = self._loop.run_in_executor(None, self._open_tmp)
        try:
            pos = start
            while pos < end:
                chunks = await self._next_chunks(pos, end, opening, file_ranges)
                if not chunks:
                    continue
                pos += chunks.length if isinstance(chunks, FileRange) else sum(len(c) for c in chunks)
                self._positions[token] = pos
                if self._writer is None:  # memory only: the producer may wait for us
                    self._trim()
                    self._notify()
                yield chunks
            if end == self.size:
                await self._until_verified()
        finally:
            self._positions.pop(token, None)
            self.subscribers -= 1
            opening.add_done_callback(_close_opened)
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

    async def _next_chunks(self, pos: int, end: int, opening: asyncio.Future[int | None],
                           file_ranges: bool) -> list[bytes] | FileRange:
        """The next bytes at `pos`, or [] after waiting for progress."""
        if self.error is not None:
            raise FillAborted(str(self.error)) from self.error
        assert self.size is not None
        limit = min(end, self.size if self.verified else self.size - 1, self.received)
        if pos < limit:
            chunks = self._from_window(pos, limit)
            if chunks:
                return chunks
            fd = await opening
            if fd is not None and pos < self.on_disk:
                if file_ranges:  # bounded, so a far-behind client still sees a failed fill soon
                    return FileRange(fd, pos, min(self.on_disk, limit, pos + FILE_RANGE_BYTES) - pos)
                count = min(READ_CHUNK, self.on_disk - pos, limit - pos)
                data = await asyncio.to_thread(os.pread, fd, count, pos)
                if data:
                    return [data]
            if fd is None:
                # Not in memory and no file to read them from (disk full and this client
                # too slow): waiting would hang, the bytes will not come back.
                raise FillAborted("bytes no longer available (disk full and client too slow)")
        await self._changed.wait()
        return []

    def _from_window(self, pos: int, limit: int) -> list[bytes]:
        """Window bytes from `pos` on (below `limit`), at most about BATCH_BYTES."""
        out: list[bytes] = []
        size = 0
        for offset, chunk in self._window:
            if offset + len(chunk) <= pos:
                continue
            if offset >= limit or size >= BATCH_BYTES or (offset > pos and not out):
                break
            piece = chunk[max(pos - offset, 0): limit - offset]
            out.append(piece)
            size += len(piece)
            pos = offset + len(chunk)
        return out

def _close_opened(opening: asyncio.Future[int | None]) -> None:
    if not opening.cancelled() and opening.exception() is None and (fd := opening.result()) is not None:
        os.close(fd)
