from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import DateTime, Enum, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base
from service.timeutil import utcnow


class Decision(StrEnum):
    approve = "approve"
    reject = "reject"


class Review(Base):
    __tablename__ = "reviews"
    # One vote per admin per dataset: the same admin twice never counts twice.
    __table_args__ = (UniqueConstraint("dataset_id", "reviewer_id", name="uq_reviews_dataset_reviewer"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    reviewer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"))
    decision: Mapped[Decision] = mapped_column(Enum(Decision, name="review_decision", native_enum=False, length=16))
    reason: Mapped[str] = mapped_column(String(2000))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
