from __future__ import annotations

import uuid

from fastapi import APIRouter, Body, Query, Response

from service.datasets import reads, service
from service.datasets.models import DatasetStatus
from service.datasets.schemas import (
    CancelRequest,
    DatasetCreate,
    DatasetList,
    DatasetPublic,
    RetryRequest,
    RevokeRequest,
)
from service.deps import AdminDep, CallerDep, ReaderDep, ResearcherDep, SessionDep, UnitOfWorkRoute

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], route_class=UnitOfWorkRoute)
LIST_LIMIT = 100  # datasets a list answers when the client names no limit


@router.post("", status_code=202, response_model=DatasetPublic, summary="Request a synthetic dataset (goes to review)")
def create_dataset(data: DatasetCreate, session: SessionDep, caller: ResearcherDep):
    ds, model, auto_approved = service.create_dataset(session, account=caller.account, actor=caller.actor, data=data)
    if auto_approved:
        service.commit_and_enqueue(session, dataset_id=ds.id)
    return service.to_public(session, ds, owner=caller.account, model=model)


@router.get("", response_model=DatasetList, summary="Your datasets (admins: everyone's)")
async def list_datasets(
    caller: ReaderDep,
    status: DatasetStatus | None = None,
    limit: int = Query(LIST_LIMIT, ge=1, le=500),
):
    return _json(await reads.list_json(account=caller.account, status=status, limit=limit))


@router.get("/{dataset_id}", response_model=DatasetPublic, summary="Status and progress of one dataset")
async def get_dataset(dataset_id: uuid.UUID, caller: ReaderDep):
    return _json(await reads.status_json(dataset_id=dataset_id, account=caller.account))


def _json(body: bytes) -> Response:
    # Already serialised through the response model (service.datasets.reads), once per query.
    return Response(body, media_type="application/json")


@router.post("/{dataset_id}/cancel", response_model=DatasetPublic, summary="Cancel your request (before it is ready)")
def cancel_dataset(dataset_id: uuid.UUID, session: SessionDep, caller: CallerDep, body: CancelRequest | None = Body(None)):
    ds = service.cancel(session, dataset_id=dataset_id, account=caller.account, reason=body.reason if body else None)
    return service.to_public(session, ds)


@router.post("/{dataset_id}/revoke", response_model=DatasetPublic, summary="Revoke a release: its files are deleted")
def revoke(dataset_id: uuid.UUID, body: RevokeRequest, session: SessionDep, caller: AdminDep):
    ds = service.revoke(session, dataset_id=dataset_id, actor=caller.actor, reason=body.reason)
    return service.to_public(session, ds)


@router.post("/{dataset_id}/retry", response_model=DatasetPublic, summary="Retry a failed generation (resumes finished shards)")
def retry(dataset_id: uuid.UUID, session: SessionDep, caller: AdminDep, body: RetryRequest | None = Body(None)):
    ds = service.retry(session, dataset_id=dataset_id, actor=caller.actor, note=body.note if body else None)
    service.commit_and_enqueue(session, dataset_id=ds.id)
    return service.to_public(session, ds)
