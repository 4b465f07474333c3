"""Write blob bodies to a client's socket from worker threads, not from the event loop.

Why: the event loop is one thread. Copying a blob into the socket from it (aiohttp's
`FileResponse` fallback under uvloop, which has no `loop.sendfile()`, or `write()` of each
chunk of a fill) makes every byte of every client pass through that one core: half of
nginx's speed for hits, and eight cold clients of one blob queue behind each other
(docs/benchmarks.md). Here a worker thread copies a file range (hits) or a list of
in-memory chunks (a running fill) with plain syscalls on the connection's non-blocking
socket, waiting for writability with poll(); the event loop only hands over the work.

Rules that keep it safe:
- The caller has sent the response headers and the transport's write buffer is empty;
  nothing else writes to the connection until the response ends (aiohttp handles one
  request at a time per connection, and the handler awaits every send).
- The threads work on duplicates of the socket and file descriptors, so they never write
  to a descriptor number the loop has closed and reused for another connection. The
  socket duplicate is closed before the caller aborts a connection (else the client would
  not see it drop).
- A cancelled request sets a stop flag that the thread checks at least every
  POLL_SECONDS; the duplicate is closed when the thread is done with it.
- At most MAX_SENDERS responses use threads at a time; beyond that the caller stays on
  the event loop, so a crowd of stalled clients cannot hold every thread.
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import threading
from concurrent.futures import Future, ThreadPoolExecutor

# File ranges go out with sendfile() in pieces of CHUNK (a stop check between pieces).
# Against 1 MiB pread/write it measured the same for 8 hit clients, 1.26x for one, and
# 8 concurrent cold clients (which read the fill's temp file) took 3.7 s instead of 4.1:
# one copy instead of two when the CPU is the limit. 256 KiB / 4 MiB pieces: no better.
CHUNK = 1024 * 1024
# Two cores are saturated by a few senders; the cap bounds the threads that stalled
# clients can hold.
MAX_SENDERS = 16
POLL_SECONDS = 0.25
FIRST_WRITE_BYTES = 256 * 1024

_pool: ThreadPoolExecutor | None = None
_active = 0
_local = threading.local()


class Sender:
    """One response's body writer; `open_sender` gives one when a thread may be used."""

    def __init__(self, transport: asyncio.Transport) -> None:
        global _pool, _active
        sock = transport.get_extra_info("socket")
        if sock is None:
            raise ConnectionResetError("connection lost")
        if _pool is None:
            _pool = ThreadPoolExecutor(MAX_SENDERS, thread_name_prefix="regcache-send")
        self._pool = _pool
        self._fd = os.dup(sock.fileno())
        self._stop = threading.Event()
        self._job: Future[None] | None = None
        self._closed = False
        self._first = True
        _active += 1

    async def send_file(self, file_fd: int, offset: int, count: int) -> None:
        """Copy `count` bytes of `file_fd` from `offset`; ConnectionResetError if the
        client goes away (or the file is shorter than announced)."""
        file_fd = os.dup(file_fd)  # the caller closes its file when we return, even on cancel
        try:
            job = self._pool.submit(_send_file, self._fd, file_fd, offset, count, self._stop)
        except BaseException:
            os.close(file_fd)
            raise
        await self._run(job)

    async def send_chunks(self, chunks: list[bytes]) -> None:
        """Write the chunks in order; ConnectionResetError if the client goes away."""
        if self._first:
            # The response's first bytes go out from the event loop, as far as the socket
            # takes them without waiting: waking a sender thread first costs milliseconds
            # on these VMs when it idles (time to first byte on a cold miss).
            self._first = False
            chunks = _write_now(self._fd, chunks, FIRST_WRITE_BYTES)
            if not chunks:
                return
        await self._run(self._pool.submit(_send_chunks, self._fd, chunks, self._stop))

    async def _run(self, job: Future[None]) -> None:
        self._job = job
        await asyncio.wrap_future(job)

    def close(self) -> None:
        """Stop any running send and release the socket duplicate (once the thread is
        done with it)."""
        global _active
        if self._closed:
            return
        self._closed = True
        _active -= 1
        self._stop.set()
        fd = self._fd
        if self._job is not None and not self._job.done():
            self._job.add_done_callback(lambda _: os.close(fd))
        else:
            os.close(fd)


def open_sender(transport: asyncio.Transport) -> Sender | None:
    """A thread sender for this response, or None: stay on the event loop when bytes are
    still queued in the transport (a thread must not write past them) or every sender is
    busy."""
    if _active >= MAX_SENDERS or transport.get_write_buffer_size():
        return None
    return Sender(transport)


# -- the threads' part ---------------------------------------------------------------------
def _send_file(sock_fd: int, file_fd: int, offset: int, count: int, stop: threading.Event) -> None:
    """Copy a file range to the socket with sendfile(); owns (and closes) `file_fd`."""
    try:
        poller = _poller(sock_fd)
        while count > 0:
            if stop.is_set():
                raise ConnectionResetError("request cancelled")
            try:
                sent = os.sendfile(sock_fd, file_fd, offset, min(count, CHUNK))
            except BlockingIOError:
                poller.poll(POLL_SECONDS * 1000)
                continue
            except (BrokenPipeError, ConnectionError) as exc:
                raise ConnectionResetError(f"client went away: {exc}") from None
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                _copy_file(sock_fd, file_fd, offset, count, stop, poller)  # no sendfile here
                return
            if sent == 0:
                raise ConnectionResetError("file shorter than announced")
            offset += sent
            count -= sent
    finally:
        os.close(file_fd)


def _copy_file(sock_fd: int, file_fd: int, offset: int, count: int, stop: threading.Event,
               poller: select.poll) -> None:
    """pread/write through one reused per-thread buffer, where sendfile() is refused."""
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = memoryview(bytearray(CHUNK))
    while count > 0:
        got = os.preadv(file_fd, [buf[:min(count, CHUNK)]], offset)
        if got == 0:
            raise ConnectionResetError("file shorter than announced")
        _write_all(sock_fd, buf[:got], stop, poller)
        offset += got
        count -= got


def _send_chunks(sock_fd: int, chunks: list[bytes], stop: threading.Event) -> None:
    poller = _poller(sock_fd)
    for chunk in chunks:
        _write_all(sock_fd, memoryview(chunk), stop, poller)


def _write_now(sock_fd: int, chunks: list[bytes], limit: int) -> list[bytes]:
    """Write what the socket takes at once, at most `limit` bytes (non-blocking; on the
    event loop); returns what is left, the first chunk as a slice of what it was."""
    for i, chunk in enumerate(chunks):
        if limit <= 0:
            return chunks[i:]
        try:
            sent = os.write(sock_fd, memoryview(chunk)[:limit])
        except BlockingIOError:
            sent = 0
        except (BrokenPipeError, ConnectionError) as exc:
            raise ConnectionResetError(f"client went away: {exc}") from None
        limit -= sent
        if sent < len(chunk):
            return [memoryview(chunk)[sent:], *chunks[i + 1:]]  # type: ignore[list-item]
    return []


def _poller(sock_fd: int) -> select.poll:
    poller = select.poll()
    poller.register(sock_fd, select.POLLOUT)
    return poller


def _write_all(sock_fd: int, data: memoryview, stop: threading.Event, poller: select.poll) -> None:
    pos, size = 0, len(data)
    try:
        while pos < size:
            if stop.is_set():
                raise ConnectionResetError("request cancelled")
            try:
                pos += os.write(sock_fd, data[pos:])
            except BlockingIOError:
                poller.poll(POLL_SECONDS * 1000)
    except (BrokenPipeError, ConnectionError) as exc:
        raise ConnectionResetError(f"client went away: {exc}") from None
