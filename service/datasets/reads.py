"""The two reads clients poll: one dataset's status and a list of datasets.

Each is one statement (the datasets with their owners' names and their models' names and versions), in
autocommit (no BEGIN/COMMIT round trips around it), shared by concurrent readers (service.coalesce):
a hundred clients polling one dataset, or each its own, cost a query or two in flight. On
PostgreSQL the statement runs on the event loop's own asyncio connections, with no worker thread:
a hundred threads handing the GIL to each other and to the loop cost three times the CPU of the
query itself. (The SQLite fallback reads in a thread.) The answer is serialised once per query, and
each reader then applies its own visibility rule to it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import lru_cache
from types import SimpleNamespace

import anyio
import psycopg
from psycopg.rows import namedtuple_row
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Select, any_, bindparam, make_url, select
from sqlalchemy.dialects import postgresql

from service.accounts.models import Account, Role
from service.coalesce import BatchedReads, coalescer
from service.datasets.models import Dataset, DatasetStatus
from service.datasets.schemas import DatasetList, DatasetPublic
from service.datasets.service import public_fields
from service.db import get_engine
from service.errors import NotFound
from service.loop_local import LoopLocal
from service.modelversions.models import ModelVersion
from service.settings import get_settings

_PUBLIC = select(
    Dataset.id, Dataset.account_id, Dataset.model_version_id, Dataset.spec, Dataset.total_images,
    Dataset.format, Dataset.heatmaps, Dataset.seed, Dataset.purpose, Dataset.status, Dataset.done_images,
    Dataset.error, Dataset.progress_note, Dataset.created_at, Dataset.updated_at,
    Account.name.label("owner_name"), ModelVersion.name.label("model_name"),
    ModelVersion.version.label("model_version"), ModelVersion.conditions.label("model_conditions"),
).join(Account, Account.id == Dataset.account_id).join(ModelVersion, ModelVersion.id == Dataset.model_version_id)
# Many datasets by id: one statement text for any number of ids on PostgreSQL (an array parameter, so
# one prepared statement), an expanding IN elsewhere.
_MANY = {True: _PUBLIC.where(Dataset.id == any_(bindparam("ids"))),
         False: _PUBLIC.where(Dataset.id.in_(bindparam("ids", expanding=True)))}


@lru_cache(maxsize=4)
def _list_query(by_account: bool, by_status: bool) -> Select:
    q = _PUBLIC.order_by(Dataset.created_at.desc(), Dataset.id).limit(bindparam("limit"))
    if by_account:
        q = q.where(Dataset.account_id == bindparam("account_id"))
    if by_status:
        q = q.where(Dataset.status == bindparam("status"))
    return q


@lru_cache(maxsize=8)
def _postgres_sql(query: Select) -> str:
    return str(query.compile(dialect=postgresql.psycopg.dialect()))


RECONNECT_TIMEOUT_S = 2.0


class _PostgresReads:
    """One event loop's asyncio connections for these reads."""

    def __init__(self, url: str, size: int, timeout_s: float):
        conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        # reconnect_timeout: the pool's reconnection backs off exponentially for as long as it keeps
        # trying (5 minutes by default), so after a 20 s outage its next attempt came ~10 s after the
        # database was back and reads kept answering 503 meanwhile. Giving up an attempt after a couple
        # of seconds lets the next read start a fresh one at once.
        self.pool = AsyncConnectionPool(conninfo, min_size=1, max_size=size, timeout=timeout_s, open=False,
                                        kwargs={"autocommit": True}, name="xraysynth-reads",
                                        reconnect_timeout=RECONNECT_TIMEOUT_S)
        self.opened = False

    async def rows(self, query: Select, params: dict) -> list:
        if not self.opened:
            await self.pool.open(wait=False)
            self.opened = True
        for attempt in (1, 2):
            try:
                async with self.pool.connection() as conn:
                    cur = conn.cursor(row_factory=namedtuple_row)
                    await cur.execute(_postgres_sql(query), params, prepare=True)
                    return await cur.fetchall()
            except psycopg.OperationalError:
                if attempt == 2:
                    raise  # the database is down: 503 database_unavailable (service.errors)
                # Connections that died with a database restart: the pool drops them; one retry.
                await self.pool.check()
        raise AssertionError("unreachable")


_pools: LoopLocal[_PostgresReads] = LoopLocal()


def _postgres() -> _PostgresReads | None:
    """The running loop's PostgreSQL reads; None on another database."""
    settings = get_settings()
    if not settings.database_url.startswith("postgresql"):
        return None
    return _pools.get(lambda: _PostgresReads(settings.database_url, settings.db_read_pool_size,
                                             settings.db_pool_timeout_s))


async def close() -> None:
    """Close the running loop's connections (at the app's shutdown)."""
    found = _pools.pop()
    if found is not None and found.opened:
        await found.pool.close()


async def _rows(query: Select, params: dict) -> list:
    pg = _postgres()
    if pg is not None:
        return await pg.rows(query, {k: (v.value if isinstance(v, DatasetStatus) else v) for k, v in params.items()})

    def in_thread() -> list:
        # Autocommit: a single SELECT needs no transaction around it.
        with get_engine().execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
            return conn.execute(query, params).all()

    return await anyio.to_thread.run_sync(in_thread)


def _public(row) -> DatasetPublic:
    owner = SimpleNamespace(id=row.account_id, name=row.owner_name)
    model = SimpleNamespace(id=row.model_version_id, name=row.model_name, version=row.model_version,
                            conditions=row.model_conditions)
    return DatasetPublic.model_validate(public_fields(row, owner, model))


@dataclass(frozen=True)
class _Status:
    account_id: uuid.UUID
    body: bytes


async def _fetch_statuses(dataset_ids: list[uuid.UUID]) -> dict[uuid.UUID, _Status]:
    rows = await _rows(_MANY[_postgres() is not None], {"ids": dataset_ids})
    return {row.id: _Status(row.account_id, _public(row).model_dump_json().encode()) for row in rows}


_status_reads: LoopLocal[BatchedReads] = LoopLocal()


async def _fetch_list(account_id: uuid.UUID | None, status: DatasetStatus | None, limit: int) -> bytes:
    params: dict = {"limit": limit}
    if account_id is not None:
        params["account_id"] = account_id
    if status is not None:
        params["status"] = status
    rows = await _rows(_list_query(account_id is not None, status is not None), params)
    return DatasetList(datasets=[_public(r) for r in rows]).model_dump_json().encode()


async def status_json(*, dataset_id: uuid.UUID, account: Account) -> bytes:
    """GET /v1/datasets/{id} as JSON. Someone else's dataset is 404 exactly like an unknown id."""
    found = await _status_reads.get(lambda: BatchedReads(_fetch_statuses)).read(dataset_id)
    if found is None or (account.role != Role.admin and found.account_id != account.id):
        raise NotFound("dataset not found")
    return found.body


async def list_json(*, account: Account, status: DatasetStatus | None, limit: int) -> bytes:
    """GET /v1/datasets as JSON: the caller's datasets, everyone's for an admin; newest first."""
    account_id = None if account.role == Role.admin else account.id
    return await coalescer().read(("list", account_id, status, limit), lambda: _fetch_list(account_id, status, limit))
