from __future__ import annotations

from datetime import UTC
from typing import Annotated

from fastapi import APIRouter, Query

from service.audit.schemas import AuditPage
from service.audit.service import actor_filter, list_events
from service.deps import AdminDep, SessionDep, UnitOfWorkRoute
from service.reviews.service import visible_details
from service.text import IsoDateTime, line

MAX_EVENT_ID = 2**63 - 1  # BIGINT: a larger cursor is a 422, not a database error
ActionFilter, TargetFilter, ActorFilter = line(max_length=64), line(max_length=64), line(max_length=120)

router = APIRouter(prefix="/v1", tags=["audit"], route_class=UnitOfWorkRoute)


@router.get("/audit", response_model=AuditPage, summary="The audit log, newest first")
def audit_log(
    session: SessionDep,
    caller: AdminDep,
    action: Annotated[
        ActionFilter | None, Query(description='exact action, or a prefix ending in "." (e.g. "dataset.")')
    ] = None,
    target_id: TargetFilter | None = None,
    actor: Annotated[ActorFilter | None, Query(description='account id or name ("system" for workers)')] = None,
    since: IsoDateTime | None = None,
    until: IsoDateTime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    before_id: Annotated[int | None, Query(ge=1, le=MAX_EVENT_ID, description="cursor: events older than this id")] = None,
):
    # A timestamp without a zone means UTC (the log is stored in UTC).
    since, until = (t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t for t in (since, until))
    actor_id, actor_name = actor_filter(actor)
    events = list_events(session, action=action, target_id=target_id, actor_id=actor_id, actor_name=actor_name,
                         since=since, until=until, limit=limit, before_id=before_id)
    seen = visible_details(session, viewer=caller.account, events=events)
    out = [{"id": e.id, "at": e.at, "actor_id": e.actor_id, "actor_name": e.actor_name, "action": e.action,
            "target_type": e.target_type, "target_id": e.target_id, "details": details}
           for e, details in zip(events, seen, strict=True)]
    return {"events": out, "next_before_id": events[-1].id if len(events) == limit else None}
