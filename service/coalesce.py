"""Concurrent identical reads share one database query, and no answer predates its request.

A reader that arrives while the same query is running must not take that query's answer: the query
may have started before a write this reader already saw committed. It waits for the *next* query of
that key, which starts as soon as the running one is done and answers every reader that queued
meanwhile. So every answer reflects the database at some moment after its request arrived (this is
not a cache: nothing is kept once the readers have their answer), and N concurrent readers of one
key cost at most two queries in flight instead of N queries queued for threads and connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from service.loop_local import LoopLocal


class ReadCoalescer:
    """One per event loop (service.loop_local): its futures belong to the loop that made them."""

    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Future] = {}
        self._queued: dict[Hashable, asyncio.Future] = {}

    async def read(self, key: Hashable, fetch: Callable[[], Awaitable[Any]]) -> Any:
        future = self._queued.get(key)
        if future is None:
            running = self._running.get(key)
            if running is None:
                future = self._start(key, fetch)
            else:
                future = asyncio.ensure_future(self._after(running, key, fetch))
                self._queued[key] = future
        # Shielded: a client that hangs up does not cancel the answer the other readers wait for.
        return await asyncio.shield(future)

    def _start(self, key: Hashable, fetch: Callable[[], Awaitable[Any]]) -> asyncio.Future:
        future = asyncio.ensure_future(fetch())
        self._running[key] = future
        future.add_done_callback(lambda f: self._forget(key, f))
        return future

    async def _after(self, running: asyncio.Future, key: Hashable, fetch: Callable[[], Awaitable[Any]]) -> Any:
        await asyncio.wait([running])  # its outcome is its own readers'; ours is a fresh query
        me = asyncio.current_task()
        if self._queued.get(key) is me:
            del self._queued[key]
        # From here on newcomers queue behind this query: it starts now, possibly after they arrived.
        self._running[key] = me
        me.add_done_callback(lambda f: self._forget(key, f))
        return await fetch()

    def _forget(self, key: Hashable, future: asyncio.Future) -> None:
        if self._running.get(key) is future:
            del self._running[key]
        if future.done() and not future.cancelled():
            future.exception()  # retrieved: every reader got it; asyncio need not log it again

    def __len__(self) -> int:
        return len(self._running) + len(self._queued)


_per_loop: LoopLocal[ReadCoalescer] = LoopLocal()


def coalescer() -> ReadCoalescer:
    """The running loop's coalescer."""
    return _per_loop.get(ReadCoalescer)
