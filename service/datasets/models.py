from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Integer,
    SmallInteger,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from service.db import Base, JsonDoc
from service.timeutil import utcnow


class DatasetStatus(StrEnum):
    pending_review = "pending_review"
    approved = "approved"
    generating = "generating"
    ready = "ready"
    revoked = "revoked"
    rejected = "rejected"
    failed = "failed"
    cancelled = "cancelled"


class ImageFormat(StrEnum):
    png = "png"
    dicom = "dicom"


class ShardStatus(StrEnum):
    pending = "pending"
    done = "done"


class Dataset(Base):
    """A researcher's request and, once generated, its release."""

    __tablename__ = "datasets"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"), index=True)
    model_version_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("model_versions.id"))
    spec: Mapped[dict[str, int]] = mapped_column(JsonDoc)  # {condition: count}
    total_images: Mapped[int] = mapped_column(Integer)
    format: Mapped[ImageFormat] = mapped_column(Enum(ImageFormat, name="image_format", native_enum=False, length=8))
    heatmaps: Mapped[bool] = mapped_column(Boolean, default=True)
    seed: Mapped[int] = mapped_column(BigInteger)
    purpose: Mapped[str] = mapped_column(String(2000))
    status: Mapped[DatasetStatus] = mapped_column(
        Enum(DatasetStatus, name="dataset_status", native_enum=False, length=20),
        default=DatasetStatus.pending_review,
        index=True,
    )
    done_images: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(String(2000))
    # What the generation step knows while it runs (e.g. "storage unreachable, retrying since …").
    progress_note: Mapped[str | None] = mapped_column(String(500))
    # Memorisation-filter totals, set when the dataset is finalised (aggregates only).
    privacy_summary: Mapped[dict | None] = mapped_column(JsonDoc)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    # Last sign of life from a worker on this dataset; the watchdog fails datasets that stop showing one.
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    shards: Mapped[list[Shard]] = relationship(back_populates="dataset", order_by="Shard.index")


class Shard(Base):
    __tablename__ = "shards"
    __table_args__ = (UniqueConstraint("dataset_id", "index", name="uq_shards_dataset_index"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    start: Mapped[int] = mapped_column(Integer)  # first image index (inclusive)
    stop: Mapped[int] = mapped_column(Integer)  # last image index (exclusive)
    seed_base: Mapped[int] = mapped_column(BigInteger)
    object_key: Mapped[str] = mapped_column(String(400))
    sha256: Mapped[str | None] = mapped_column(String(64))
    size: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[ShardStatus] = mapped_column(
        Enum(ShardStatus, name="shard_status", native_enum=False, length=16), default=ShardStatus.pending
    )
    rejected_images: Mapped[int] = mapped_column(Integer, default=0)  # memorisation-filter replacements
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    dataset: Mapped[Dataset] = relationship(back_populates="shards")


class SyntheticImage(Base):
    """Provenance of one released image: enough to regenerate it and check it bit for bit.

    Written in bulk (COPY on Postgres) one shard at a time; the composite key makes a re-run of a
    crashed shard unable to duplicate rows.
    """

    __tablename__ = "synthetic_images"

    dataset_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True
    )
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    shard_index: Mapped[int] = mapped_column(Integer)
    condition: Mapped[str] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(BigInteger)
    attempt: Mapped[int] = mapped_column(SmallInteger, default=0)  # >0: earlier draws failed the filter
    sha256: Mapped[str] = mapped_column(String(64))
    probability: Mapped[float | None] = mapped_column(Float)
    nn_distance: Mapped[float | None] = mapped_column(Float)  # memorisation score to nearest training image
