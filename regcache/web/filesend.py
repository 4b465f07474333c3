"""Send a byte range of a stored blob to a client socket from a worker thread.

Why: regcache runs on uvloop, which has no `loop.sendfile()`, so aiohttp's `FileResponse`
falls back to 256 KiB reads in the default executor (6 threads on 2 cores) and a write
from the event loop per chunk: half of nginx's speed for cache hits (docs/benchmarks.md).
Here one thread per response copies the whole range with blocking-style syscalls on the
connection's non-blocking socket, waiting for writability with poll(): no event-loop work
per chunk, and two responses use both cores.

Rules that keep it safe:
- The caller has sent the response headers and the transport's write buffer is empty;
  nothing else writes to the connection until `send_range` returns (aiohttp handles one
  request at a time per connection, and the handler awaits us).
- The thread works on duplicates of the socket and file descriptors, so it never writes
  to a descriptor number the loop has closed and reused for another connection.
- A cancelled request sets a stop flag that the thread checks at least every
  POLL_SECONDS; it then closes its duplicates and ends.
- At most MAX_SENDERS threads; beyond that the caller uses the event-loop path, so a crowd
  of stalled clients cannot hold every thread.
"""

from __future__ import annotations

import asyncio
import os
import select
import threading
from concurrent.futures import ThreadPoolExecutor

# pread/write in 1 MiB pieces through one reused per-thread buffer: as fast as os.sendfile()
# for regcache's hits in the bench and steadier (one loopback sendfile stream is bimodal on
# these VMs, perf-notes.md); 256 KiB and 4 MiB measured no better.
CHUNK = 1024 * 1024
# Two cores are saturated by a few senders; the cap bounds the threads (and their 1 MiB
# buffers, 16 MiB at most) that stalled clients can hold.
MAX_SENDERS = 16
POLL_SECONDS = 0.25

_pool: ThreadPoolExecutor | None = None
_active = 0
_local = threading.local()


def available() -> bool:
    """Is a sender thread free (checked on the event loop, before `send_range`)?"""
    return _active < MAX_SENDERS


async def send_range(transport: asyncio.BaseTransport, file_fd: int, offset: int, count: int) -> None:
    """Copy `count` bytes of `file_fd` from `offset` to the transport's socket.

    Raises ConnectionResetError if the client goes away (or the file is shorter than
    announced, after which the connection cannot be used either).
    """
    global _pool, _active
    sock = transport.get_extra_info("socket")
    if sock is None:
        raise ConnectionResetError("connection lost")
    if _pool is None:
        _pool = ThreadPoolExecutor(MAX_SENDERS, thread_name_prefix="regcache-send")
    sock_fd = os.dup(sock.fileno())
    try:
        file_fd = os.dup(file_fd)
    except OSError:
        os.close(sock_fd)
        raise
    stop = threading.Event()
    _active += 1
    try:
        await asyncio.get_running_loop().run_in_executor(
            _pool, _send_blocking, sock_fd, file_fd, offset, count, stop)
    finally:
        _active -= 1
        stop.set()  # on cancellation: the thread stops at its next check


def _send_blocking(sock_fd: int, file_fd: int, offset: int, count: int, stop: threading.Event) -> None:
    """The thread's part; it owns (and closes) both descriptors."""
    try:
        poller = select.poll()
        poller.register(sock_fd, select.POLLOUT)
        _copy_loop(sock_fd, file_fd, offset, count, stop, poller)
    except (BrokenPipeError, ConnectionError) as exc:
        raise ConnectionResetError(f"client went away: {exc}") from None
    finally:
        os.close(sock_fd)
        os.close(file_fd)


def _wait_writable(sock_fd: int, stop: threading.Event, poller: select.poll) -> None:
    while not poller.poll(POLL_SECONDS * 1000):
        if stop.is_set():
            raise ConnectionResetError("request cancelled")
    if stop.is_set():
        raise ConnectionResetError("request cancelled")


def _copy_loop(sock_fd: int, file_fd: int, offset: int, count: int, stop: threading.Event,
               poller: select.poll) -> None:
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = memoryview(bytearray(CHUNK))
    while count > 0:
        got = os.preadv(file_fd, [buf[:min(count, CHUNK)]], offset)
        if got == 0:
            raise ConnectionResetError("file shorter than announced")
        pos = 0
        while pos < got:
            try:
                pos += os.write(sock_fd, buf[pos:got])
            except BlockingIOError:
                _wait_writable(sock_fd, stop, poller)
        offset += got
        count -= got
