"""A released dataset's routes: signed download URLs and the dataset card (under /v1/datasets/{id}).

Apart from the datasets router so the datasets domain does not depend on reviews: the card shows the
review's progress, and reviews depend on datasets."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Query

from service.datasets import service as datasets_service
from service.datasets.card import DatasetCard
from service.datasets.schemas import DownloadManifest
from service.deps import CallerDep, SessionDep, UnitOfWorkRoute
from service.releases import service

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], route_class=UnitOfWorkRoute)


@router.get("/{dataset_id}/download", response_model=DownloadManifest, summary="Signed URLs for every file of a ready dataset")
def download(
    dataset_id: uuid.UUID,
    session: SessionDep,
    caller: CallerDep,
    expires_in: int | None = Query(None, description="seconds the URLs stay valid (default 1 h, at most 7 days)"),
):
    ds = datasets_service.get_owned(session, dataset_id=dataset_id, account=caller.account)
    return service.download_manifest(session, dataset=ds, actor=caller.actor, expires_in=expires_in)


@router.get("/{dataset_id}/card", response_model=DatasetCard, response_model_exclude_unset=True,
            summary="Dataset card (provisional until the release is published)")
def card(dataset_id: uuid.UUID, session: SessionDep, caller: CallerDep) -> dict:
    ds = datasets_service.get_visible(session, dataset_id=dataset_id, account=caller.account)
    return service.dataset_card(session, dataset=ds, viewer=caller.account)
