"""Concurrent readers of one dataset share queries, and never get an answer from before they asked."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy import text

from service.coalesce import ReadCoalescer
from tests.api.conftest import PURPOSE


class Store:
    """A value that changes while reads of it are in flight; each read takes `delay` seconds."""

    def __init__(self, delay: float = 0.02):
        self.value, self.delay, self.reads = 0, delay, 0

    async def read(self) -> int:
        self.reads += 1
        seen = self.value  # the snapshot a query would take when it starts
        await asyncio.sleep(self.delay)
        return seen


def test_a_reader_never_gets_a_query_that_started_before_it_arrived():
    async def scenario():
        store, c = Store(), ReadCoalescer()
        first = asyncio.ensure_future(c.read("k", store.read))
        await asyncio.sleep(0.005)  # the first query is running
        store.value = 1  # a write commits; the next reader has seen it
        second = asyncio.ensure_future(c.read("k", store.read))
        assert await first == 0
        assert await second == 1
        assert store.reads == 2

    asyncio.run(scenario())


def test_a_hundred_concurrent_readers_cost_at_most_two_queries():
    async def scenario():
        store, c = Store(), ReadCoalescer()
        results = await asyncio.gather(*(c.read("k", store.read) for _ in range(100)))
        assert results == [0] * 100
        assert store.reads <= 2
        assert len(c) == 0  # nothing is kept once the readers have their answer

    asyncio.run(scenario())


def test_a_failed_query_fails_its_readers_and_the_next_read_tries_again():
    async def scenario():
        c, calls = ReadCoalescer(), []

        async def flaky():
            calls.append(1)
            await asyncio.sleep(0.01)
            if len(calls) == 1:
                raise ConnectionError("database restarting")
            return "ok"

        outcomes = await asyncio.gather(*(c.read("k", flaky) for _ in range(5)), return_exceptions=True)
        # The first reader's query failed; those queued behind it got a query of their own.
        assert isinstance(outcomes[0], ConnectionError) and outcomes[1:] == ["ok"] * 4
        assert len(calls) == 2
        assert await c.read("k", flaky) == "ok"

    asyncio.run(scenario())


def test_a_reader_that_hangs_up_does_not_cancel_the_others():
    async def scenario():
        store, c = Store(delay=0.05), ReadCoalescer()
        quitter = asyncio.ensure_future(c.read("k", store.read))
        stayer = asyncio.ensure_future(c.read("k", store.read))
        await asyncio.sleep(0.01)
        quitter.cancel()
        assert await stayer == 0

    asyncio.run(scenario())


@pytest.fixture
def pending_dataset(api, researcher, model):
    r = api.post("/v1/datasets", json={"conditions": {"Mass": 3}, "purpose": PURPOSE}, headers=researcher.headers)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_status_shows_a_write_committed_by_another_process_at_once(api, researcher, db, pending_dataset):
    # As a worker does: its own connection, committed; the very next read shows it.
    for done in (1, 2, 3):
        db.execute(text("UPDATE datasets SET done_images = :d WHERE id = :id"), {"d": done, "id": pending_dataset})
        db.commit()
        assert api.get(f"/v1/datasets/{pending_dataset}", headers=researcher.headers).json()["progress"]["done"] == done


def test_two_hundred_concurrent_status_reads_share_a_handful_of_queries(researcher, admin, pending_dataset,
                                                                        monkeypatch):
    from service.app import create_app
    from service.datasets import reads

    queries = []
    real = reads._fetch_status

    async def counted(dataset_id):
        queries.append(dataset_id)
        return await real(dataset_id)

    monkeypatch.setattr(reads, "_fetch_status", counted)

    async def scenario():
        app = create_app()
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            # Warm the key cache, then count only the dataset reads.
            await client.get(f"/v1/datasets/{pending_dataset}", headers=researcher.headers)
            await client.get(f"/v1/datasets/{pending_dataset}", headers=admin.headers)
            queries.clear()
            reads_ = [client.get(f"/v1/datasets/{pending_dataset}", headers=(researcher if i % 2 else admin).headers)
                      for i in range(200)]
            return await asyncio.gather(*reads_)

    answers = asyncio.run(scenario())
    assert [a.status_code for a in answers] == [200] * 200
    assert {a.json()["id"] for a in answers} == {pending_dataset}
    # Each query answers every reader that arrived while the one before it ran.
    assert 1 <= len(queries) <= 100, f"{len(queries)} queries for 200 concurrent reads"


def test_someone_elses_dataset_is_still_404_when_reads_are_shared(api, researcher, researcher_b, pending_dataset):
    stranger = researcher_b
    assert api.get(f"/v1/datasets/{pending_dataset}", headers=stranger.headers).status_code == 404
    assert api.get(f"/v1/datasets/{pending_dataset}", headers=researcher.headers).status_code == 200


def test_the_collector_does_not_run_every_few_polls_under_concurrent_reads(researcher, pending_dataset, settings_env):
    # A request's objects are freed by reference counting; at Python's default threshold a hundred
    # polls in flight started a young collection every few requests, a sixth of a read's CPU.
    import gc

    from service.app import create_app

    settings_env(rate_limit="100000/minute")
    collections = []

    def count(phase, info):
        if phase == "start":
            collections.append(info["generation"])

    async def scenario():
        app = create_app()
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            url = f"/v1/datasets/{pending_dataset}"
            await client.get(url, headers=researcher.headers)
            gc.callbacks.append(count)
            try:
                for _ in range(10):
                    answers = await asyncio.gather(*(client.get(url, headers=researcher.headers) for _ in range(100)))
                    assert {a.status_code for a in answers} == {200}
            finally:
                gc.callbacks.remove(count)

    before = gc.get_threshold()
    asyncio.run(scenario())
    assert len(collections) <= 20, f"{len(collections)} collections in 1,000 reads"
    assert gc.get_threshold() == before  # the app's setting ends with its lifespan
