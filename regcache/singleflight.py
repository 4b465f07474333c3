"""Keyed de-duplication of concurrent work (Go's singleflight, for asyncio).

The first caller for a key starts the work as a task; callers arriving while it runs await
the same task. The task is shielded: a caller that goes away (client disconnect) does not
cancel work others wait for, and strong references keep the task alive until it ends.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Awaitable, Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class SingleFlight(Generic[K, T]):
    def __init__(self) -> None:
        self._tasks: dict[K, asyncio.Task[T]] = {}

    def in_flight(self, key: K) -> bool:
        return key in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    async def do(self, key: K, work: Callable[[], Awaitable[T]]) -> T:
        """Run `work` once for all concurrent callers with this key; return its result."""
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.ensure_future(work())
            self._tasks[key] = task
            task.add_done_callback(functools.partial(self._forget, key))
        return await asyncio.shield(task)

    def _forget(self, key: K, task: asyncio.Task[T]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # mark retrieved: callers got it, no "never retrieved" warning
