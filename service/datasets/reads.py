"""The two reads clients poll: one dataset's status and a list of datasets.

Each is one statement (the dataset with its owner's name and its model's name and version), run in
autocommit so no BEGIN/COMMIT round trips surround it, on a worker thread of its own, and coalesced
across concurrent readers of the same key (service.coalesce): a hundred clients polling one dataset
cost a query or two in flight, not a hundred queued for threads and connections. The answer is
serialised once per query and each reader then applies its own visibility rule to it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from types import SimpleNamespace

import anyio
from sqlalchemy import Row, bindparam, select
from sqlalchemy.engine import Engine

from service.accounts.models import Account, Role
from service.coalesce import coalescer
from service.datasets.models import Dataset, DatasetStatus
from service.datasets.schemas import DatasetList, DatasetPublic
from service.datasets.service import public_fields
from service.db import get_engine
from service.errors import NotFound
from service.modelversions.models import ModelVersion

_PUBLIC = select(
    Dataset.id, Dataset.account_id, Dataset.model_version_id, Dataset.spec, Dataset.total_images,
    Dataset.format, Dataset.heatmaps, Dataset.seed, Dataset.purpose, Dataset.status, Dataset.done_images,
    Dataset.error, Dataset.progress_note, Dataset.created_at, Dataset.updated_at,
    Account.name.label("owner_name"), ModelVersion.name.label("model_name"),
    ModelVersion.version.label("model_version"),
).join(Account, Account.id == Dataset.account_id).join(ModelVersion, ModelVersion.id == Dataset.model_version_id)
_ONE = _PUBLIC.where(Dataset.id == bindparam("dataset_id"))


def _reads() -> Engine:
    # Autocommit: a single SELECT needs no transaction around it (one round trip instead of three).
    return get_engine().execution_options(isolation_level="AUTOCOMMIT")


def _public(row: Row) -> DatasetPublic:
    owner = SimpleNamespace(id=row.account_id, name=row.owner_name)
    model = SimpleNamespace(id=row.model_version_id, name=row.model_name, version=row.model_version)
    return DatasetPublic.model_validate(public_fields(row, owner, model))


@dataclass(frozen=True)
class _Status:
    account_id: uuid.UUID
    body: bytes


def _fetch_status(dataset_id: uuid.UUID) -> _Status | None:
    with _reads().connect() as conn:
        row = conn.execute(_ONE, {"dataset_id": dataset_id}).one_or_none()
    return None if row is None else _Status(row.account_id, _public(row).model_dump_json().encode())


def _fetch_list(account_id: uuid.UUID | None, status: DatasetStatus | None, limit: int) -> bytes:
    q = _PUBLIC.order_by(Dataset.created_at.desc(), Dataset.id).limit(limit)
    if account_id is not None:
        q = q.where(Dataset.account_id == account_id)
    if status is not None:
        q = q.where(Dataset.status == status)
    with _reads().connect() as conn:
        rows = conn.execute(q).all()
    return DatasetList(datasets=[_public(r) for r in rows]).model_dump_json().encode()


async def status_json(*, dataset_id: uuid.UUID, account: Account) -> bytes:
    """GET /v1/datasets/{id} as JSON. Someone else's dataset is 404 exactly like an unknown id."""
    found = await coalescer().read(("status", dataset_id), lambda: anyio.to_thread.run_sync(_fetch_status, dataset_id))
    if found is None or (account.role != Role.admin and found.account_id != account.id):
        raise NotFound("dataset not found")
    return found.body


async def list_json(*, account: Account, status: DatasetStatus | None, limit: int) -> bytes:
    """GET /v1/datasets as JSON: the caller's datasets, everyone's for an admin; newest first."""
    account_id = None if account.role == Role.admin else account.id
    return await coalescer().read(("list", account_id, status, limit),
                                  lambda: anyio.to_thread.run_sync(_fetch_list, account_id, status, limit))
