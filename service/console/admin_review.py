"""Admin pages about datasets: the review queue, the review page with its evidence (the only console
pages that show real images), every dataset with revoke and retry."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from pydantic import ValidationError
from sqlalchemy.orm import Session

from service import layout
from service.console.deps import AdminPage, CheckedForm, field_errors
from service.console.render import PageRoute, redirect, render, state_diagram
from service.console.sessions import ConsoleCaller
from service.datasets import service as datasets_service
from service.datasets.models import DatasetStatus
from service.datasets.schemas import RetryRequest, RevokeRequest
from service.deps import SessionDep
from service.errors import NotFound
from service.reviews import service as reviews_service
from service.reviews.schemas import ReviewCreate
from service.reviews.views import evidence_image_response
from service.settings import get_settings
from service.storage import exists

router = APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False)

EVIDENCE_IMAGES = layout.EVIDENCE_IMAGES


@router.get("/reviews")
def review_queue(request: Request, session: SessionDep, caller: AdminPage):
    queue = reviews_service.review_queue(session, viewer=caller.account, status=DatasetStatus.pending_review)
    return render(request, "reviews.html", caller=caller, queue=queue)


def _evidence_images(dataset_id: uuid.UUID) -> dict[str, bool]:
    s = get_settings()
    have = {name: exists(s.private_bucket, layout.evidence_key(dataset_id, name)) for name in EVIDENCE_IMAGES}
    if not have[layout.EVIDENCE_PREVIEW]:
        have[layout.EVIDENCE_PREVIEW] = exists(s.release_bucket, layout.release_key(dataset_id, layout.PREVIEW))
    return have


def _histogram(edges, *series: tuple[str, list]) -> list[dict] | None:
    """Bins with each series as a fraction of its own total, for side-by-side bars."""
    if not edges or not all(isinstance(c, list) for _, c in series):
        return None
    totals = [max(1, sum(c)) for _, c in series]
    bins = []
    for i in range(len(edges) - 1 if len(edges) > 1 else 0):
        label = f"{edges[i]:.2f}–{edges[i + 1]:.2f}"
        bins.append({"label": label, "lo": edges[i], "hi": edges[i + 1], "values": [
            (name, counts[i] if i < len(counts) else 0, (counts[i] if i < len(counts) else 0) / total)
            for (name, counts), total in zip(series, totals, strict=True)]})
    return bins


def review_context(session: Session, caller: ConsoleCaller, dataset_id: uuid.UUID) -> dict:
    ds = datasets_service.get_visible(session, dataset_id=dataset_id, account=caller.account)
    ev = reviews_service.evidence(session, dataset=ds, viewer=caller.account)
    cal = ev["model"]["calibration"] or {}
    gen = ev["generation"] or {}
    calibration_bins = _histogram(cal.get("bin_edges"), ("same patient", cal.get("same_patient_counts")),
                                  ("different patient", cal.get("different_patient_counts")))
    # Flags per check: the filter's own breakdown when the worker wrote one, else its single total.
    checks = gen.get("checks") if isinstance(gen.get("checks"), dict) else (
        {"memorisation filter": {"n_rejected": gen.get("n_rejected")}} if gen else {})
    # The x axis is the copy check's score; images the re-identification check dropped are counted in
    # `rejected` too and can lie right of the copy threshold: say so rather than look like a filter bug.
    reid = checks.get("reidentification") if isinstance(checks.get("reidentification"), dict) else {}
    reid_dropped = int(reid.get("n_rejected") or 0)
    rejected_name = "rejected (copy or re-identification check)" if reid_dropped else "rejected"
    dataset_bins = _histogram(gen.get("bin_edges"), ("released", gen.get("dataset_counts")),
                              (rejected_name, gen.get("rejected_counts"))) if gen else None
    attacks = (ev["model"]["membership_inference"] or {}).get("attacks") or {}
    mia_aucs = [(name, a.get("auc")) for name, a in sorted(attacks.items()) if isinstance(a, dict)]
    return {
        "ds": ev["dataset"], "mia_aucs": mia_aucs, "evidence": ev, "review": ev["review"], "images": _evidence_images(ds.id),
        "calibration_bins": calibration_bins, "dataset_bins": dataset_bins, "checks": checks,
        "reid_dropped": reid_dropped,
        "diagram": state_diagram(ds.status.value),
    }


@router.get("/datasets/{dataset_id}/evidence/{name}")
def evidence_image(dataset_id: uuid.UUID, name: str, session: SessionDep, caller: AdminPage):
    if name not in EVIDENCE_IMAGES:
        raise NotFound("no such evidence image")
    return evidence_image_response(session, caller, dataset_id, name)


def admin_dataset_page(request: Request, session: Session, caller: ConsoleCaller, dataset_id: uuid.UUID,
                       errors: dict | None = None, status_code: int = 200, form: dict | None = None):
    ctx = review_context(session, caller, dataset_id)
    return render(request, "admin_dataset.html", status_code=status_code, caller=caller, errors=errors or {},
                  form=form or {}, **ctx)


@router.post("/datasets/{dataset_id}/reviews")
def vote(dataset_id: uuid.UUID, request: Request, session: SessionDep, caller: AdminPage, form: CheckedForm):
    try:
        body = ReviewCreate(decision=form.get("decision") or "", reason=form.get("reason") or "")
    except ValidationError as exc:
        return admin_dataset_page(request, session, caller, dataset_id, field_errors(exc), 422, dict(form))
    ds, approved_now = reviews_service.cast_vote(session, dataset_id=dataset_id, reviewer=caller.account,
                                                 actor=caller.actor, decision=body.decision, reason=body.reason)
    if approved_now:
        datasets_service.commit_and_enqueue(session, dataset_id=ds.id)
    return redirect(f"/ui/datasets/{dataset_id}?done=voted")


@router.post("/datasets/{dataset_id}/revoke")
def revoke(dataset_id: uuid.UUID, request: Request, session: SessionDep, caller: AdminPage, form: CheckedForm):
    try:
        body = RevokeRequest(reason=form.get("reason") or "")
    except ValidationError as exc:
        return admin_dataset_page(request, session, caller, dataset_id, field_errors(exc), 422, dict(form))
    datasets_service.revoke(session, dataset_id=dataset_id, actor=caller.actor, reason=body.reason)
    return redirect(f"/ui/datasets/{dataset_id}?done=revoked")


@router.post("/datasets/{dataset_id}/retry")
def retry(dataset_id: uuid.UUID, request: Request, session: SessionDep, caller: AdminPage, form: CheckedForm):
    try:
        body = RetryRequest(note=form.get("note") or None)
    except ValidationError as exc:
        return admin_dataset_page(request, session, caller, dataset_id, field_errors(exc), 422, dict(form))
    ds = datasets_service.retry(session, dataset_id=dataset_id, actor=caller.actor, note=body.note)
    datasets_service.commit_and_enqueue(session, dataset_id=ds.id)
    return redirect(f"/ui/datasets/{dataset_id}?done=retried")


def admin_datasets_page(request: Request, session: Session, caller: ConsoleCaller, status: str | None):
    wanted = DatasetStatus(status) if status in {s.value for s in DatasetStatus} else None
    rows = datasets_service.to_public_many(session, datasets_service.list_datasets(
        session, account_id=None, status=wanted, limit=500))
    return render(request, "admin_datasets.html", caller=caller, datasets=rows, status=wanted,
                  statuses=[s.value for s in DatasetStatus], diagram=state_diagram(None))
