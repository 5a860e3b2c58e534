from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.audit.models import AuditEvent


@dataclass(frozen=True)
class Actor:
    """Who caused a change: an account (researcher/admin) or the system (worker, watchdog)."""

    id: uuid.UUID | None
    name: str
    role: str  # "researcher" | "admin" | "system"


SYSTEM = Actor(id=None, name="system", role="system")


def record(session: Session, *, actor: Actor, action: str, target_type: str, target_id: object, details: dict | None = None) -> AuditEvent:
    """Add an audit event to the caller's transaction: it commits or rolls back with the change."""
    event = AuditEvent(
        actor_id=actor.id,
        actor_name=actor.name,
        action=action,
        target_type=target_type,
        target_id=str(target_id),
        details=details or {},
    )
    session.add(event)
    return event


def actor_filter(actor: str | None) -> tuple[uuid.UUID | None, str | None]:
    """The audit log's actor filter: an account id if it parses as one, else an actor name."""
    if not actor:
        return None, None
    try:
        return uuid.UUID(actor), None
    except ValueError:
        return None, actor


def list_events(
    session: Session,
    *,
    action: str | None = None,
    target_id: str | None = None,
    actor_id: uuid.UUID | None = None,
    actor_name: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    before_id: int | None = None,
) -> list[AuditEvent]:
    q = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if action:
        q = q.where(AuditEvent.action.startswith(action) if action.endswith(".") else AuditEvent.action == action)
    if target_id:
        q = q.where(AuditEvent.target_id == target_id)
    if actor_id:
        q = q.where(AuditEvent.actor_id == actor_id)
    if actor_name:
        q = q.where(AuditEvent.actor_name == actor_name)
    if since:
        q = q.where(AuditEvent.at >= since)
    if until:
        q = q.where(AuditEvent.at < until)
    if before_id:
        q = q.where(AuditEvent.id < before_id)
    return list(session.scalars(q))
