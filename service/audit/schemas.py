from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel


class AuditEventPublic(BaseModel):
    id: int
    at: datetime
    actor_id: uuid.UUID | None
    actor_name: str
    action: str
    target_type: str
    target_id: str
    details: dict


class AuditPage(BaseModel):
    events: list[AuditEventPublic]
    # Pass as ?before_id= for the next (older) page; null on the last page.
    next_before_id: int | None
