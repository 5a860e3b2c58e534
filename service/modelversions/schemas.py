"""Public shapes of generator versions and the condition catalogue (aggregates only: never object keys)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.modelversions.models import ModelStatus
from service.text import text

TransitionNote = text(max_length=500)


class ModelRef(BaseModel):
    id: uuid.UUID
    name: str
    version: str


class ConditionOffer(BaseModel):
    name: str
    patients: int | None
    available: bool
    reason: str | None = None


class MemorisationSummary(BaseModel):
    threshold: float | None = None
    same_patient_catch_rate: float | None = None
    different_patient_flag_rate: float | None = None
    targets_met: bool | None = None
    target_catch_rate: float | None = None
    target_flag_rate: float | None = None


class DifferentialPrivacy(BaseModel):
    epsilon: float
    delta: float | None = None


class MembershipInferenceSummary(BaseModel):
    target: float | None = None
    target_met: bool | None = None
    aucs: dict[str, float]


class PrivacySummary(BaseModel):
    memorisation_filter: MemorisationSummary | None
    differential_privacy: DifferentialPrivacy | None
    membership_inference: MembershipInferenceSummary | None


class PublicTrainingData(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fingerprint: Any = None
    patients_per_condition: Any = None
    n_images: Any = None


class PublicModelCard(BaseModel):
    """The part of a model card researchers see (the one list of public card fields); the training
    configuration, run details and anything naming a storage location stay in the hospital zone.
    Values are the card's own (cards from older trainers vary in type), so they are not coerced."""

    model_config = ConfigDict(extra="forbid")
    name: Any = None
    version: Any = None
    architecture: Any = None
    image_size: Any = None
    conditions: Any = None
    licences: Any = None
    citations: Any = None
    caveats: Any = None
    limitations: Any = None
    intended_use: Any = None
    how_to_cite: Any = None
    metrics: Any = None
    differential_privacy: Any = None
    # per-condition shares of empty heatmaps and deletion margins: aggregates only, no image
    heatmaps: Any = None
    # the seed study's experiment (real vs real + synthetic top-up): per-class figures over seeds
    augmentation_experiment: Any = None
    created_at: Any = None
    training_data: PublicTrainingData | None = None


class ModelPublic(BaseModel):
    id: uuid.UUID
    name: str
    version: str
    architecture: str
    image_size: int
    status: ModelStatus
    created_at: datetime
    published_at: datetime | None
    training_fingerprint: str
    conditions: list[ConditionOffer]
    metrics: dict
    privacy: PrivacySummary
    card: dict = Field(description="PublicModelCard: the fields the model's card has")
    # Admins only (None for researchers): why this version cannot be published yet.
    publish_blockers: list[str] | None = None


class ModelList(BaseModel):
    models: list[ModelPublic]


class ConditionModelOffer(ModelRef):
    patients: int | None
    available: bool
    reason: str | None = None


class ConditionPublic(BaseModel):
    name: str
    available: bool
    reason: str | None = None
    models: list[ConditionModelOffer]


class ConditionList(BaseModel):
    min_training_patients: int
    conditions: list[ConditionPublic]


class ModelTransition(BaseModel):
    """Optional body of publish/retire: a note for the audit log."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"note": "evaluation signed off by the ML lead on 2026-11-20"}]},
    )
    note: TransitionNote | None = None
