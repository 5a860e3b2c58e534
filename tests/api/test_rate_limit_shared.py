"""The per-key rate limit across API processes (two limiters on one Redis stand for two processes)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis as redis_lib

from service.accounts.ratelimit import FLUSH_S, RateLimitUnavailable, SharedRateLimiter


@pytest.fixture
def redis_url(infra):
    url = f"{infra.redis.endpoint}/3"
    redis_lib.Redis.from_url(url).flushdb()
    return url


def _stored(url: str, key: str) -> int:
    r = redis_lib.Redis.from_url(url)
    return sum(int(r.get(k)) for k in r.scan_iter(f"*:{key}:*"))


def test_two_processes_together_admit_exactly_the_limit(redis_url):
    key = str(uuid.uuid4())

    async def scenario():
        a, b = SharedRateLimiter(redis_url, "50/minute"), SharedRateLimiter(redis_url, "50/minute")
        decisions = await asyncio.gather(*(lim.hit(key) for _ in range(40) for lim in (a, b)))
        return [d.allowed for d in decisions], [d.retry_after_s for d in decisions if not d.allowed]

    allowed, retry_after = asyncio.run(scenario())
    assert sum(allowed) == 50
    assert all(1 <= s <= 61 for s in retry_after)
    assert _stored(redis_url, key) == 50  # refused requests are not counted against the key


def test_far_from_the_limit_counts_are_batched_but_none_is_lost(redis_url):
    key = str(uuid.uuid4())

    async def scenario():
        a, b = SharedRateLimiter(redis_url, "1000000/minute"), SharedRateLimiter(redis_url, "1000000/minute")
        allowed = 0
        for _ in range(2000):
            allowed += (await a.hit(key)).allowed + (await b.hit(key)).allowed
        await asyncio.sleep(FLUSH_S * 1.5)
        await a.hit(key), await b.hit(key)  # each flushes what it still held (and counts itself)
        return allowed + 2

    admitted = asyncio.run(scenario())
    assert admitted == 4002
    stored = _stored(redis_url, key)
    # The last two hits are still pending in their processes; everything before them reached Redis.
    assert stored == admitted - 2, stored


def test_one_process_refuses_at_the_limit_until_the_window_moves(redis_url):
    key = str(uuid.uuid4())

    async def scenario():
        lim = SharedRateLimiter(redis_url, "5/second")
        first = [(await lim.hit(key)).allowed for _ in range(8)]
        await asyncio.sleep(2.1)  # two periods later the sliding window has emptied
        return first, (await lim.hit(key)).allowed

    first, later = asyncio.run(scenario())
    assert first == [True] * 5 + [False] * 3
    assert later


def test_the_one_box_memory_store_limits_the_same_way():
    async def scenario():
        lim = SharedRateLimiter("memory://", "3/minute")
        return [(await lim.hit("k")).allowed for _ in range(5)]

    assert asyncio.run(scenario()) == [True, True, True, False, False]


def test_an_unreachable_store_is_a_503_error_not_a_pass():
    async def scenario():
        lim = SharedRateLimiter("redis://127.0.0.1:1/0", "100/minute")
        await lim.hit("k")

    with pytest.raises(RateLimitUnavailable) as err:
        asyncio.run(scenario())
    assert err.value.status_code == 503 and err.value.headers["Retry-After"]


def test_a_client_far_past_its_limit_is_refused_without_a_round_trip_each(redis_url, monkeypatch):
    key = str(uuid.uuid4())
    round_trips = []
    real = SharedRateLimiter._execute

    async def counted(pipe):
        round_trips.append(1)
        return await real(pipe)

    monkeypatch.setattr(SharedRateLimiter, "_execute", staticmethod(counted))

    async def scenario():
        a, b = SharedRateLimiter(redis_url, "20/minute"), SharedRateLimiter(redis_url, "20/minute")
        assert all([(await a.hit(key)).allowed for _ in range(20)])
        round_trips.clear()
        started = asyncio.get_running_loop().time()
        refused = await asyncio.gather(*(lim.hit(key) for _ in range(300) for lim in (a, b)))
        return refused, asyncio.get_running_loop().time() - started

    decisions, took = asyncio.run(scenario())
    assert not any(d.allowed for d in decisions) and all(d.retry_after_s >= 1 for d in decisions)
    # A sync per process per FLUSH_S at most, not one per request (600 before).
    assert len(round_trips) <= 2 * (2 + took / FLUSH_S), (len(round_trips), took)
    assert _stored(redis_url, key) == 20  # still exactly the limit: refusals are not counted


def test_requests_arriving_during_a_sync_wait_for_it_together_not_in_line_for_the_lock(redis_url):
    # In line, they woke one per turn of the event loop: under load the last of a hundred waited
    # a couple of hundred milliseconds for a round trip of one.
    key = str(uuid.uuid4())

    class CountingLock(asyncio.Lock):
        acquired = 0

        async def acquire(self):
            CountingLock.acquired += 1
            return await super().acquire()

    async def scenario():
        lim = SharedRateLimiter(redis_url, "1000000/minute")
        assert (await lim.hit(key)).allowed
        lim._keys[key].lock = CountingLock()
        await asyncio.sleep(FLUSH_S * 1.5)  # the next request syncs; the others arrive meanwhile
        decisions = await asyncio.gather(*(lim.hit(key) for _ in range(100)))
        return [d.allowed for d in decisions]

    assert asyncio.run(scenario()) == [True] * 100
    assert CountingLock.acquired == 1
    assert _stored(redis_url, key) == 1  # the other hundred are counted here until the next sync
