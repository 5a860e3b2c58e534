from __future__ import annotations

import uuid
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from service import layout
from service.datasets import service as datasets_service
from service.datasets.models import DatasetStatus
from service.deps import AdminDep, SessionDep, UnitOfWorkRoute
from service.reviews import service
from service.reviews.schemas import ReviewCreate, ReviewOutcome, ReviewQueue

router = APIRouter(prefix="/v1", tags=["reviews"], route_class=UnitOfWorkRoute)

StatusFilter = Literal["pending", *(s.value for s in DatasetStatus)]  # "pending" = pending_review


@router.get("/reviews", response_model=ReviewQueue, summary="The review queue, with links to the evidence")
def review_queue(session: SessionDep, caller: AdminDep, status: StatusFilter = "pending"):  # type: ignore[valid-type]
    wanted = DatasetStatus.pending_review if status == "pending" else DatasetStatus(status)
    return {"reviews": service.review_queue(session, viewer=caller.account, status=wanted)}


@router.post("/datasets/{dataset_id}/reviews", response_model=ReviewOutcome, summary="Approve or reject, with a reason")
def cast_vote(dataset_id: uuid.UUID, body: ReviewCreate, session: SessionDep, caller: AdminDep):
    ds, approved_now = service.cast_vote(
        session, dataset_id=dataset_id, reviewer=caller.account, actor=caller.actor, decision=body.decision, reason=body.reason
    )
    enqueued = datasets_service.commit_and_enqueue(session, dataset_id=ds.id) if approved_now else None
    return {
        "dataset": datasets_service.to_public(session, ds),
        "review": service.review_state(session, dataset=ds, viewer=caller.account),
        "enqueued": enqueued,
    }


@router.get("/datasets/{dataset_id}/evidence", summary="Privacy and quality evidence (hospital admins only)")
def evidence(dataset_id: uuid.UUID, session: SessionDep, caller: AdminDep) -> dict:
    ds = datasets_service.get_visible(session, dataset_id=dataset_id, account=caller.account)
    return service.evidence(session, dataset=ds, viewer=caller.account)


def evidence_image_response(session, caller, dataset_id: uuid.UUID, name: str) -> StreamingResponse:
    """An admin evidence image, streamed and never cached (the REST route and the console page both)."""
    datasets_service.get_visible(session, dataset_id=dataset_id, account=caller.account)
    body, length = service.evidence_image(dataset_id=dataset_id, name=name)
    headers = {"Cache-Control": "no-store"}  # may show real training images: never cached on the way
    if length is not None:
        headers["Content-Length"] = str(length)
    return StreamingResponse(body.iter_chunks(1 << 16), media_type="image/png", headers=headers)


@router.get("/datasets/{dataset_id}/evidence/pairs.png", summary="Synthetic images beside their nearest real training images")
def evidence_pairs(dataset_id: uuid.UUID, session: SessionDep, caller: AdminDep):
    return evidence_image_response(session, caller, dataset_id, layout.EVIDENCE_PAIRS)


@router.get("/datasets/{dataset_id}/evidence/preview.png", summary="Preview grid with heatmaps (once generated)")
def evidence_preview(dataset_id: uuid.UUID, session: SessionDep, caller: AdminDep):
    return evidence_image_response(session, caller, dataset_id, layout.EVIDENCE_PREVIEW)
