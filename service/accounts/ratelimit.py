"""The per-key API rate limit: shared by every API process through Redis, nearly free per request.

A sliding-window counter: Redis keeps one count per key and period, and a request is admitted while
this period's count plus the previous period's, weighted by how much of it the sliding window still
covers, stays within the limit.

Far from the limit, each process counts the requests it admits and adds them to Redis in one round
trip, reading back every process's totals, at most every ``FLUSH_S`` or after ``BATCH_SHARE`` of the
remaining headroom, whichever comes first: a busy key costs a dictionary update per request, and
fewer than 1 / BATCH_SHARE processes together cannot run past the limit between two syncs. Within
``EXACT_SHARE`` of the limit every admission is one atomic increment in Redis, undone if it does not
fit: there the count is exact, whatever the number of processes. A key already over its limit by
counts read less than ``FLUSH_S`` ago is refused without asking again. Requests that arrive during a
key's sync wait for it together, not in line for the key's lock.

Redis unreachable: ``RateLimitUnavailable`` (503 with Retry-After), never a silent pass. With
``memory://`` (the one-box service: one API process) the counts live in this process.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

from limits import RateLimitItem, parse
from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.errors import ApiError
from service.loop_local import LoopLocal

FLUSH_S = 0.1
BATCH_SHARE = 0.05
EXACT_SHARE = 0.9
RETRY_AFTER_UNAVAILABLE_S = 5


class RateLimitUnavailable(ApiError):
    status_code, code = 503, "rate_limit_unavailable"


@dataclass
class _Key:
    window: int = -1  # index of the period the counts below belong to
    pending: int = 0  # admitted here, not yet added to Redis
    current: int = 0  # every process's count for `window`, as last read
    previous: int = 0  # every process's count for `window - 1`, as last read
    synced_at: float = float("-inf")
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Done when the running sync is: requests that arrive meanwhile wait for it together and mostly
    # need no sync of their own. Queued on the lock instead, they woke one per turn of the event loop,
    # and with a hundred clients the last waited a couple of hundred milliseconds.
    sync_done: asyncio.Future | None = None


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: int = 0


class SharedRateLimiter:
    """One per event loop (its Redis client and locks belong to that loop)."""

    def __init__(self, redis_url: str, limit: str, prefix: str = "xraysynth:rl"):
        self.settings = (redis_url, limit)
        self.item: RateLimitItem = parse(limit)
        self.amount, self.period = self.item.amount, float(self.item.get_expiry())
        # Retried: after a Redis restart the first call on an old connection fails; a new one succeeds.
        self.redis = (aioredis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2,
                                        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
                                        retry_on_error=[RedisConnectionError, RedisTimeoutError])
                      if redis_url.startswith(("redis://", "rediss://", "unix://")) else None)
        self.prefix = prefix
        self._keys: dict[str, _Key] = {}
        self._local: dict[str, int] = {}  # memory://: the counts themselves

    async def hit(self, key: str | uuid.UUID) -> Decision:
        key, now = str(key), time.time()
        window = int(now // self.period)
        st = self._keys.setdefault(key, _Key())
        if self._near(st, now):
            return await self._exact_hit(key, st, window, now)
        if self._due(st, window, now):
            await _running_sync(st)
            if self._due(st, window, now) and not self._over(st, window, now):
                async with st.lock:
                    # Unless another request synced while this one waited.
                    if self._due(st, window, now) and not self._over(st, window, now):
                        await self._sync(key, st, window, add=0)
            if self._near(st, now):
                return await self._exact_hit(key, st, window, now)
        st.pending += 1
        return Decision(True)

    def _due(self, st: _Key, window: int, now: float) -> bool:
        """Time to add this process's count to the store and read everyone's."""
        return (st.window != window or time.monotonic() - st.synced_at >= FLUSH_S
                or st.pending + 1 > BATCH_SHARE * (self.amount - self._estimate(st, now)))

    def _estimate(self, st: _Key, now: float) -> float:
        overlap = 1.0 - (now / self.period - st.window)  # share of the previous period still covered
        return st.previous * max(0.0, overlap) + st.current + st.pending

    def _near(self, st: _Key, now: float) -> bool:
        return st.window >= 0 and self._estimate(st, now) + 1 > EXACT_SHARE * self.amount

    async def _exact_hit(self, key: str, st: _Key, window: int, now: float) -> Decision:
        await _running_sync(st)
        if self._over(st, window, now):
            return self._refusal(window, now)
        async with st.lock:
            if self._over(st, window, now):  # another request synced while this one waited
                return self._refusal(window, now)
            await self._sync(key, st, window, add=1)  # this request included, atomically
            if self._estimate(st, now) <= self.amount:
                return Decision(True)
            await self._undo(key, window)
            st.current -= 1
            return self._refusal(window, now)

    def _over(self, st: _Key, window: int, now: float) -> bool:
        """Over the limit by every process's count as read less than FLUSH_S ago, in this period: the
        refusal needs no round trip (a client that keeps sending past its limit would otherwise cost one
        per request, all queued on this key's lock). Refused requests are not counted and the estimate
        follows the sliding window, so Redis could only confirm it; a request another process counted
        and undid meanwhile can make it one too strict for FLUSH_S. Admissions always ask Redis."""
        return (st.window == window and time.monotonic() - st.synced_at < FLUSH_S
                and self._estimate(st, now) + 1 > self.amount)

    def _refusal(self, window: int, now: float) -> Decision:
        return Decision(False, max(1, int((window + 1) * self.period - now) + 1))

    def _count_key(self, key: str, window: int) -> str:
        return f"{self.prefix}:{self.amount}/{int(self.period)}:{key}:{window}"

    async def _sync(self, key: str, st: _Key, window: int, *, add: int) -> None:
        """Add this process's pending count (and `add` more, to `window`) to the store, and read back
        every process's totals of `window` and the one before."""
        increments: dict[str, int] = {}
        if st.pending and st.window >= 0:
            increments[self._count_key(key, st.window)] = st.pending
        if add:
            current = self._count_key(key, window)
            increments[current] = increments.get(current, 0) + add
        names = (self._count_key(key, window), self._count_key(key, window - 1))
        st.sync_done = done = asyncio.get_running_loop().create_future()
        try:
            totals = await self._totals(increments, names, window)
            st.window, st.pending, st.synced_at = window, 0, time.monotonic()
            st.current, st.previous = int(totals[0] or 0), int(totals[1] or 0)
        finally:
            done.set_result(None)  # failed or not: those waiting look again (and ask Redis themselves)

    async def _totals(self, increments: dict[str, int], names: tuple[str, str], window: int) -> list:
        if self.redis is None:
            for k, n in increments.items():
                self._local[k] = self._local.get(k, 0) + n
            for k in [k for k in self._local if int(k.rsplit(":", 1)[1]) < window - 1]:
                del self._local[k]
            totals = [self._local.get(k, 0) for k in names]
        else:
            pipe = self.redis.pipeline(transaction=False)
            for k, n in increments.items():
                pipe.incrby(k, n)
                pipe.expire(k, int(2 * self.period) + 1)
            for k in names:
                pipe.get(k)
            totals = (await self._execute(pipe))[-2:]
        return totals

    async def _undo(self, key: str, window: int) -> None:
        name = self._count_key(key, window)
        if self.redis is None:
            self._local[name] -= 1
        else:
            pipe = self.redis.pipeline(transaction=False)
            pipe.decrby(name, 1)
            await self._execute(pipe)

    @staticmethod
    async def _execute(pipe) -> list:
        try:
            return await pipe.execute()
        except (RedisError, OSError) as exc:
            raise RateLimitUnavailable(f"the rate-limit store is unavailable; retry in {RETRY_AFTER_UNAVAILABLE_S}s",
                                       headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE_S)}) from exc


async def _running_sync(st: _Key) -> None:
    if st.sync_done is not None and not st.sync_done.done():
        await asyncio.shield(st.sync_done)


_per_loop: LoopLocal[SharedRateLimiter] = LoopLocal()


def limiter_for_loop(redis_url: str, limit: str) -> SharedRateLimiter:
    """The running loop's limiter for these settings (a new one when they change)."""
    return _per_loop.get(lambda: SharedRateLimiter(redis_url, limit),
                         still_fits=lambda found: found.settings == (redis_url, limit))


def reset() -> None:
    _per_loop.clear()
