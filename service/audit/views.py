from __future__ import annotations

import uuid
from datetime import UTC, datetime

from fastapi import APIRouter, Query

from service.audit.schemas import AuditPage
from service.audit.service import list_events
from service.deps import AdminDep, SessionDep
from service.reviews.service import hidden_vote_targets

router = APIRouter(prefix="/v1", tags=["audit"])


@router.get("/audit", response_model=AuditPage, summary="The audit log, newest first")
def audit_log(
    session: SessionDep,
    caller: AdminDep,
    action: str | None = Query(None, max_length=64, description='exact action, or a prefix ending in "." (e.g. "dataset.")'),
    target_id: str | None = Query(None, max_length=64),
    actor: str | None = Query(None, max_length=120, description='account id or name ("system" for workers)'),
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = Query(100, ge=1, le=500),
    before_id: int | None = Query(None, ge=1, description="cursor: events older than this id"),
):
    # A timestamp without a zone means UTC (the log is stored in UTC).
    since, until = (t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t for t in (since, until))
    actor_id, actor_name = None, None
    if actor:
        try:
            actor_id = uuid.UUID(actor)
        except ValueError:
            actor_name = actor
    events = list_events(session, action=action, target_id=target_id, actor_id=actor_id, actor_name=actor_name,
                         since=since, until=until, limit=limit, before_id=before_id)
    # The log must not be a way around blind voting: other admins' votes on a dataset the caller has yet
    # to review are shown without decision and reason.
    hidden = hidden_vote_targets(
        session, viewer=caller.account, dataset_ids={e.target_id for e in events if e.action == "review.cast"}
    )
    out = []
    for e in events:
        details = e.details
        if e.action == "review.cast" and e.target_id in hidden and e.actor_id != caller.account.id:
            details = {"hidden": "cast your own vote on this dataset to see the others"}
        out.append({"id": e.id, "at": e.at, "actor_id": e.actor_id, "actor_name": e.actor_name, "action": e.action,
                    "target_type": e.target_type, "target_id": e.target_id, "details": details})
    return {"events": out, "next_before_id": events[-1].id if len(events) == limit else None}
