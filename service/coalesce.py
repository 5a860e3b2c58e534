"""Concurrent reads share database queries, and no answer predates its request.

A reader that arrives while a query it could use is running must not take that query's answer: the
query may have started before a write this reader already saw committed. It waits for the *next*
query, which starts as soon as the running one is done and answers every reader that queued
meanwhile. So every answer reflects the database at some moment after its request arrived (this is
not a cache: nothing is kept once the readers have their answer).

- `ReadCoalescer`: readers of one key (one list, one key lookup) share a query; N concurrent readers
  cost at most two queries in flight instead of N queued for threads and connections.
- `BatchedReads`: readers of different keys of one kind (each client polling its own dataset) share
  one query for all their keys, at most `max_in_flight` queries at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from itertools import islice
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


class BatchedReads:
    """Reads of single keys answered by one query for many keys (`fetch_many` returns a mapping; a key
    it lacks reads as None). One per event loop, like ReadCoalescer."""

    def __init__(self, fetch_many: Callable[[list[Hashable]], Awaitable[dict]], *, max_batch: int = 500,
                 max_in_flight: int = 2):
        self._fetch_many, self.max_batch, self.max_in_flight = fetch_many, max_batch, max_in_flight
        self._waiting: dict[Hashable, asyncio.Future] = {}  # keys whose next query has not started
        self._in_flight = 0
        self._start_scheduled = False
        self._tasks: set[asyncio.Task] = set()  # referenced while they run: the loop keeps only weak ones

    async def read(self, key: Hashable) -> Any:
        future = self._waiting.get(key)
        if future is None:
            future = self._waiting[key] = asyncio.get_running_loop().create_future()
            self._schedule()
        # Shielded: a client that hangs up does not fail the answer the other readers wait for.
        return await asyncio.shield(future)

    def _schedule(self) -> None:
        if self._waiting and self._in_flight < self.max_in_flight and not self._start_scheduled:
            # Started on the loop's next turn: the readers arriving in this one join the same query.
            self._start_scheduled = True
            asyncio.get_running_loop().call_soon(self._start)

    def _start(self) -> None:
        self._start_scheduled = False
        if not self._waiting or self._in_flight >= self.max_in_flight:
            return
        batch = {key: self._waiting.pop(key) for key in list(islice(self._waiting, self.max_batch))}
        self._in_flight += 1
        task = asyncio.ensure_future(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: dict[Hashable, asyncio.Future]) -> None:
        try:
            found = await self._fetch_many(list(batch))
        except asyncio.CancelledError:  # the loop is shutting down
            for future in batch.values():
                future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 — every reader of the batch gets it (a 503 in an outage)
            for future in batch.values():
                if not future.done():
                    future.set_exception(exc)
                    future.exception()  # retrieved: its readers get it; asyncio need not log it again
        else:
            for key, future in batch.items():
                if not future.done():
                    future.set_result(found.get(key))
        finally:
            self._in_flight -= 1
            self._schedule()

    def __len__(self) -> int:
        return len(self._waiting) + self._in_flight


_per_loop: LoopLocal[ReadCoalescer] = LoopLocal()


def coalescer() -> ReadCoalescer:
    """The running loop's coalescer."""
    return _per_loop.get(ReadCoalescer)
