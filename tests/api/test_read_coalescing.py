"""Concurrent readers of one dataset share queries, and never get an answer from before they asked."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy import text

from service.coalesce import BatchedReads, ReadCoalescer
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


class Table:
    """Rows that change while batched reads of them are in flight; each query takes `delay` seconds."""

    def __init__(self, delay: float = 0.02):
        self.rows, self.delay, self.queries = {}, delay, []

    async def read_many(self, keys: list) -> dict:
        self.queries.append(list(keys))
        seen = {k: self.rows[k] for k in keys if k in self.rows}  # the snapshot the query takes
        await asyncio.sleep(self.delay)
        return seen


def test_a_hundred_readers_of_a_hundred_keys_share_a_query_and_each_gets_its_own_row():
    async def scenario():
        table = Table()
        table.rows = {k: f"row {k}" for k in range(100)}
        b = BatchedReads(table.read_many)
        results = await asyncio.gather(*(b.read(k) for k in range(100)), b.read(500))
        assert results == [f"row {k}" for k in range(100)] + [None]  # an unknown key reads as None
        assert len(table.queries) == 1 and sorted(table.queries[0]) == [*range(100), 500]
        assert len(b) == 0  # nothing is kept once the readers have their answer

    asyncio.run(scenario())


def test_a_batched_reader_never_gets_a_query_that_started_before_it_arrived():
    async def scenario():
        table = Table()
        table.rows = {"a": 0, "b": 0}
        b = BatchedReads(table.read_many, max_in_flight=1)
        first = asyncio.ensure_future(b.read("a"))
        await asyncio.sleep(0.005)  # the first query is running
        table.rows = {"a": 1, "b": 1}  # a write commits; the next readers have seen it
        again, other = asyncio.ensure_future(b.read("a")), asyncio.ensure_future(b.read("b"))
        assert await first == 0
        assert (await again, await other) == (1, 1)
        assert table.queries == [["a"], ["a", "b"]]

    asyncio.run(scenario())


def test_batches_beyond_the_in_flight_limit_wait_and_big_ones_are_split():
    async def scenario():
        table = Table()
        table.rows = {k: k for k in range(25)}
        b = BatchedReads(table.read_many, max_batch=10, max_in_flight=2)
        results = await asyncio.gather(*(b.read(k) for k in range(25)))
        assert results == list(range(25))
        assert [len(q) for q in table.queries] == [10, 10, 5]

    asyncio.run(scenario())


def test_a_failed_batch_fails_its_readers_and_the_next_read_tries_again():
    async def scenario():
        calls = []

        async def flaky(keys):
            calls.append(keys)
            await asyncio.sleep(0.01)
            if len(calls) == 1:
                raise ConnectionError("database restarting")
            return {k: "ok" for k in keys}

        b = BatchedReads(flaky)
        outcomes = await asyncio.gather(*(b.read(k) for k in range(3)), return_exceptions=True)
        assert all(isinstance(o, ConnectionError) for o in outcomes)
        assert await b.read(1) == "ok" and len(calls) == 2

    asyncio.run(scenario())


def test_a_batched_reader_that_hangs_up_does_not_cancel_the_others():
    async def scenario():
        table = Table(delay=0.05)
        table.rows = {"a": "A", "b": "B"}
        b = BatchedReads(table.read_many)
        quitter, stayer = asyncio.ensure_future(b.read("a")), asyncio.ensure_future(b.read("b"))
        await asyncio.sleep(0.01)
        quitter.cancel()
        assert await stayer == "B"

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


def _with_app(scenario):
    """`scenario(client)` against the app in this process, its lifespan included; returns its result."""
    from service.app import create_app

    async def run():
        app = create_app()
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            return await scenario(client)

    return asyncio.run(run())


@pytest.fixture
def status_queries(monkeypatch) -> list[list]:
    """The dataset ids of each status query, in order."""
    from service.datasets import reads

    queries, real = [], reads._fetch_statuses

    async def counted(dataset_ids):
        queries.append(dataset_ids)
        return await real(dataset_ids)

    monkeypatch.setattr(reads, "_fetch_statuses", counted)
    return queries


def test_two_hundred_concurrent_status_reads_share_a_handful_of_queries(researcher, admin, pending_dataset,
                                                                        status_queries):
    async def scenario(client):
        # Warm the key cache, then count only the dataset reads.
        await client.get(f"/v1/datasets/{pending_dataset}", headers=researcher.headers)
        await client.get(f"/v1/datasets/{pending_dataset}", headers=admin.headers)
        status_queries.clear()
        return await asyncio.gather(*(client.get(f"/v1/datasets/{pending_dataset}",
                                                 headers=(researcher if i % 2 else admin).headers)
                                      for i in range(200)))

    answers = _with_app(scenario)
    assert [a.status_code for a in answers] == [200] * 200
    assert {a.json()["id"] for a in answers} == {pending_dataset}
    # Each query answers every reader that arrived while the one before it ran.
    assert 1 <= len(status_queries) <= 100, f"{len(status_queries)} queries for 200 concurrent reads"


def test_two_hundred_clients_each_polling_their_own_dataset_share_a_handful_of_queries(
        researcher, researcher_b, dataset_at, settings_env, status_queries):
    settings_env(rate_limit="100000/minute")
    mine = [str(dataset_at(researcher)) for _ in range(100)]
    theirs = [str(dataset_at(researcher_b)) for _ in range(100)]
    # A stranger polls some of someone else's datasets in the same batches.
    polls = [(ds, researcher) for ds in mine] + [(ds, researcher_b) for ds in theirs + mine[:20]]

    async def scenario(client):
        for user in (researcher, researcher_b):  # warm the key cache
            await client.get(f"/v1/datasets/{mine[0]}", headers=user.headers)
        status_queries.clear()
        return await asyncio.gather(*(client.get(f"/v1/datasets/{ds}", headers=user.headers) for ds, user in polls))

    answers = _with_app(scenario)
    for (ds, user), answer in zip(polls, answers, strict=True):
        if user is researcher_b and ds in mine:
            assert answer.status_code == 404, answer.text
        else:
            assert answer.status_code == 200, answer.text
            assert answer.json()["id"] == ds and answer.json()["owner"]["id"] == str(user.id)
    assert 1 <= len(status_queries) <= 10, f"{len(status_queries)} queries for {len(polls)} concurrent reads"
    assert {str(i) for q in status_queries for i in q} == set(mine + theirs)


def test_someone_elses_dataset_is_still_404_when_reads_are_shared(api, researcher, researcher_b, pending_dataset):
    stranger = researcher_b
    assert api.get(f"/v1/datasets/{pending_dataset}", headers=stranger.headers).status_code == 404
    assert api.get(f"/v1/datasets/{pending_dataset}", headers=researcher.headers).status_code == 200


def test_the_collector_does_not_run_every_few_polls_under_concurrent_reads(researcher, pending_dataset, settings_env):
    # A request's objects are freed by reference counting; at Python's default threshold a hundred
    # polls in flight started a young collection every few requests, a sixth of a read's CPU.
    import gc

    settings_env(rate_limit="100000/minute")
    collections = []

    def count(phase, info):
        if phase == "start":
            collections.append(info["generation"])

    async def scenario(client):
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
    _with_app(scenario)
    assert len(collections) <= 20, f"{len(collections)} collections in 1,000 reads"
    assert gc.get_threshold() == before  # the app's setting ends with its lifespan


def test_a_flood_of_health_probes_shares_a_few_rounds_of_checks(clean, monkeypatch):
    from service import health

    rounds, real = [], health._db  # one database check per round

    def counted():
        rounds.append(1)
        return real()

    monkeypatch.setattr(health, "_db", counted)

    async def scenario(client):
        return await asyncio.gather(*(client.get("/v1/health") for _ in range(200)))

    answers = _with_app(scenario)
    # No generation worker runs here: 200 and "degraded", every answer the same round's shape.
    assert {a.status_code for a in answers} == {200}
    assert {a.json()["db"] for a in answers} == {"ok"}
    assert 1 <= len(rounds) <= 10, f"{len(rounds)} rounds of checks for 200 probes"
