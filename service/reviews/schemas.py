from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from service.datasets.schemas import DatasetPublic, Reason
from service.modelversions.schemas import ModelRef
from service.reviews.models import Decision


class ReviewCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"decision": "approve", "reason": "Purpose matches the signed data-use agreement; evidence shows no near-copies."},
                {"decision": "reject", "reason": "Hernia is too rare in our training set for a 5,000-image release."},
            ]
        },
    )
    decision: Decision
    reason: Reason


class Vote(BaseModel):
    reviewer: str
    decision: Decision
    reason: str
    at: datetime


class ReviewState(BaseModel):
    """Blind voting: while a dataset is pending, an admin who has not voted sees neither the other votes
    nor their count (a count of approvals is itself a decision signal)."""

    approvals_required: int
    approvals_given: int | None
    blind: bool
    can_vote: bool
    your_vote: Vote | None
    votes: list[Vote] | None


class ReviewLinks(BaseModel):
    dataset: str
    card: str
    evidence: str
    evidence_pairs: str
    evidence_preview: str
    vote: str


class ReviewItem(BaseModel):
    dataset: DatasetPublic
    researcher: str
    purpose: str
    model: ModelRef
    review: ReviewState
    links: ReviewLinks


class ReviewQueue(BaseModel):
    reviews: list[ReviewItem]


class ReviewOutcome(BaseModel):
    dataset: DatasetPublic
    review: ReviewState
    # True/False once an approval completed the policy: whether the generation task reached the broker
    # (False: the dataset stays approved and the worker's sweeper enqueues it). None otherwise.
    enqueued: bool | None = None
