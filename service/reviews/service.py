"""Review policy: REVIEWS_REQUIRED distinct approving admins release a dataset, one reject ends it, and
no admin sees another's vote before casting their own. Also the admin-only evidence (hospital zone)."""

from __future__ import annotations

import json
import logging
import uuid

from botocore.exceptions import ClientError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service import layout, storage
from service.accounts.models import Account
from service.audit.service import Actor, record
from service.datasets import transitions
from service.datasets.models import Dataset, DatasetStatus
from service.datasets.service import list_datasets, lock, to_public_many
from service.errors import ApiError, Conflict, NotFound
from service.modelversions import service as models_service
from service.modelversions.models import ModelVersion
from service.reviews.models import Decision, Review
from service.settings import get_settings

log = logging.getLogger("xraysynth.reviews")

S = DatasetStatus


def votes(session: Session, *, dataset_id: uuid.UUID) -> list[Review]:
    return list(session.scalars(select(Review).where(Review.dataset_id == dataset_id).order_by(Review.created_at, Review.id)))


def _vote(session: Session, review: Review) -> dict:
    reviewer = session.get(Account, review.reviewer_id)
    return {"reviewer": reviewer.name, "decision": review.decision, "reason": review.reason, "at": review.created_at}


def review_state(session: Session, *, dataset: Dataset, viewer: Account, researcher_view: bool = False) -> dict:
    required = get_settings().reviews_required
    rs = votes(session, dataset_id=dataset.id)
    approvals = sum(1 for r in rs if r.decision == Decision.approve)
    if researcher_view:
        # Researchers see progress, never who voted or why (a rejection's reason is in the dataset's error).
        return {"approvals_required": required, "approvals_given": approvals}
    mine = next((r for r in rs if r.reviewer_id == viewer.id), None)
    pending = dataset.status == S.pending_review
    blind = pending and mine is None
    return {
        "approvals_required": required,
        "approvals_given": None if blind else approvals,
        "blind": blind,
        "can_vote": blind,
        "your_vote": _vote(session, mine) if mine else None,
        "votes": None if blind else [_vote(session, r) for r in rs],
    }


def hidden_vote_targets(session: Session, *, viewer: Account, dataset_ids: set[str]) -> set[str]:
    """Datasets (of those given) whose votes the viewer may not see yet: pending and not voted by them.
    The audit log uses this so it cannot be read around the blind vote."""
    ids = []
    for d in dataset_ids:
        try:
            ids.append(uuid.UUID(d))
        except ValueError:
            continue
    if not ids:
        return set()
    pending = set(session.scalars(select(Dataset.id).where(Dataset.id.in_(ids), Dataset.status == S.pending_review)))
    voted = set(session.scalars(select(Review.dataset_id).where(Review.dataset_id.in_(pending), Review.reviewer_id == viewer.id)))
    return {str(d) for d in pending - voted}


def visible_details(session: Session, *, viewer: Account, events) -> list[dict]:
    """Each audit event's details as this admin may see them: the log must not be a way around blind
    voting, so other admins' votes on a dataset the viewer has yet to review lose decision and reason."""
    hidden = hidden_vote_targets(session, viewer=viewer, dataset_ids={e.target_id for e in events if e.action == "review.cast"})
    return [{"hidden": "cast your own vote on this dataset to see the others"}
            if e.action == "review.cast" and e.target_id in hidden and e.actor_id != viewer.id else e.details
            for e in events]


def cast_vote(
    session: Session, *, dataset_id: uuid.UUID, reviewer: Account, actor: Actor, decision: Decision, reason: str
) -> tuple[Dataset, bool]:
    """Record one admin's vote and apply the policy. Returns (dataset, approved_now); the caller commits and
    then enqueues generation when approved_now."""
    ds = lock(session, dataset_id=dataset_id)  # votes on one dataset serialise on its row
    if ds.status != S.pending_review:
        raise Conflict(f"dataset is {ds.status.value}; only datasets pending review can be reviewed", code="not_pending")
    if session.scalar(select(Review.id).where(Review.dataset_id == ds.id, Review.reviewer_id == reviewer.id)):
        raise Conflict("you have already reviewed this dataset; each admin's vote counts once", code="already_reviewed")
    if decision == Decision.approve:
        models_service.refuse_if_retired(session, model_id=ds.model_version_id, action="approved",
                                         advice="reject it")
    session.add(Review(dataset_id=ds.id, reviewer_id=reviewer.id, decision=decision, reason=reason))
    try:
        session.flush()
    except IntegrityError:  # the unique (dataset, reviewer) constraint, should a racing request slip past
        raise Conflict("you have already reviewed this dataset; each admin's vote counts once", code="already_reviewed") from None
    record(session, actor=actor, action="review.cast", target_type="dataset", target_id=ds.id,
           details={"decision": decision.value, "reason": reason})

    if decision == Decision.reject:
        transitions.transition(session, ds, S.rejected, actor=actor, reason=reason)
        ds.error = f"rejected in review: {reason}"  # what the researcher sees
        return ds, False
    required = get_settings().reviews_required
    approvals = sum(1 for r in votes(session, dataset_id=ds.id) if r.decision == Decision.approve)
    if approvals >= required:
        transitions.transition(session, ds, S.approved, actor=actor,
                               details={"approvals": approvals, "reviews_required": required})
        return ds, True
    return ds, False


def review_queue(session: Session, *, viewer: Account, status: DatasetStatus) -> list[dict]:
    datasets = list(reversed(list_datasets(session, account_id=None, status=status, limit=500)))  # oldest first
    out = []
    for public, ds in zip(to_public_many(session, datasets), datasets, strict=True):
        base = f"/v1/datasets/{ds.id}"
        out.append({
            "dataset": public,
            "researcher": public["owner"]["name"],
            "purpose": ds.purpose,
            "model": public["model"],
            "review": review_state(session, dataset=ds, viewer=viewer),
            "links": {"dataset": base, "card": f"{base}/card", "evidence": f"{base}/evidence",
                      "evidence_pairs": f"{base}/evidence/pairs.png", "evidence_preview": f"{base}/evidence/preview.png",
                      "vote": f"{base}/reviews"},
        })
    return out


# ---------------------------------------------------------------- evidence (admins only)


def _read_private_json(key: str) -> dict | None:
    try:
        doc = json.loads(storage.get_bytes(get_settings().private_bucket, key))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise ApiError("object storage is unavailable", status_code=503, code="storage_unavailable") from None
    except ValueError:
        log.warning("%s is not valid JSON", key)
        return {"error": "evidence.json is not valid JSON"}
    return doc if isinstance(doc, dict) else {"value": doc}


def evidence(session: Session, *, dataset: Dataset, viewer: Account) -> dict:
    mv = session.get(ModelVersion, dataset.model_version_id)
    generation = _read_private_json(layout.evidence_key(dataset.id, layout.EVIDENCE_JSON))
    base = f"/v1/datasets/{dataset.id}"
    [public] = to_public_many(session, [dataset])
    return {
        "dataset": public,
        "model": {
            "id": str(mv.id), "name": mv.name, "version": mv.version, "status": mv.status.value,
            "calibration": mv.privacy_calibration,  # rates and same/different-patient histograms
            "differential_privacy": {"epsilon": mv.dp_epsilon, "delta": mv.dp_delta} if mv.dp_epsilon is not None else None,
            "membership_inference": models_service.membership_inference(mv),
            "metrics": mv.metrics,
            "patients_per_condition": mv.patients_per_condition,
        },
        "privacy_summary": dataset.privacy_summary,
        "generation": generation,
        "note": None if generation is not None else (
            "generation has not run yet: the memorisation audit and nearest-neighbour pairs appear here once it does"
        ),
        "review": review_state(session, dataset=dataset, viewer=viewer),
        "links": {"pairs_png": f"{base}/evidence/pairs.png", "preview_png": f"{base}/evidence/preview.png", "card": f"{base}/card"},
    }


def evidence_image(*, dataset_id: uuid.UUID, name: str):
    """Stream an evidence image. pairs.png (synthetic beside nearest real training images) exists only in
    the private bucket; the preview is the worker's evidence copy, else the released preview."""
    s = get_settings()
    candidates = [(s.private_bucket, layout.evidence_key(dataset_id, name))]
    if name == layout.EVIDENCE_PREVIEW:
        candidates.append((s.release_bucket, layout.release_key(dataset_id, layout.PREVIEW)))
    client = storage.internal_client()
    for bucket, key in candidates:
        try:
            obj = client.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                continue
            raise ApiError("object storage is unavailable", status_code=503, code="storage_unavailable") from None
        return obj["Body"], obj.get("ContentLength")
    raise NotFound(f"{name} does not exist yet for this dataset (generation has not produced it)")
