from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import DateTime, Enum, Float, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base, JsonDoc
from service.timeutil import utcnow


class ModelStatus(StrEnum):
    draft = "draft"
    published = "published"
    retired = "retired"


class ModelVersion(Base):
    """A trained generator: its checkpoint in the private bucket plus the card researchers see."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_versions_name_version"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(80))
    version: Mapped[str] = mapped_column(String(40))
    architecture: Mapped[str] = mapped_column(Text)  # shown whole on cards and the console
    image_size: Mapped[int] = mapped_column(Integer)
    conditions: Mapped[list[str]] = mapped_column(JsonDoc)
    checkpoint_key: Mapped[str] = mapped_column(String(400))
    checkpoint_sha256: Mapped[str] = mapped_column(String(64))
    # Hospital-zone memorisation index (training embeddings + down-sampled pixels); required to publish.
    privacy_index_key: Mapped[str | None] = mapped_column(String(400))
    privacy_index_sha256: Mapped[str | None] = mapped_column(String(64))
    training_fingerprint: Mapped[str] = mapped_column(String(64))
    patients_per_condition: Mapped[dict[str, int]] = mapped_column(JsonDoc)
    dp_epsilon: Mapped[float | None] = mapped_column(Float)
    dp_delta: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict] = mapped_column(JsonDoc, default=dict)
    privacy_calibration: Mapped[dict | None] = mapped_column(JsonDoc)
    card: Mapped[dict] = mapped_column(JsonDoc, default=dict)
    status: Mapped[ModelStatus] = mapped_column(
        Enum(ModelStatus, name="model_status", native_enum=False, length=16), default=ModelStatus.draft
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
