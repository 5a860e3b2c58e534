"""Request and response shapes of datasets. Strict types: a string where a count belongs is a 422 naming
the field, not a silent coercion; unknown fields are refused."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from service.datasets.models import DatasetStatus, ImageFormat
from service.modelversions.schemas import ModelRef
from service.text import line, text

MAX_SEED = 2**63 - 1  # BIGINT; the worker derives per-image latents from (seed, index)

ConditionName = line(min_length=1, max_length=64)
ModelName = line(min_length=1, max_length=160)
Purpose = text(min_length=20, max_length=2000)
Reason = text(min_length=1, max_length=2000)
Note = text(max_length=500)
ImageCount = Annotated[StrictInt, Field(gt=0, description="images of this condition (> 0)")]


class DatasetCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "conditions": {"Mass": 500, "No Finding": 500},
                    "model": "cxr-dcgan:1.0",
                    "format": "png",
                    "heatmaps": True,
                    "seed": 20261126,
                    "purpose": "Pre-training a lung-mass detector before fine-tuning on our own labelled scans.",
                }
            ]
        },
    )

    conditions: dict[ConditionName, ImageCount] = Field(
        min_length=1, max_length=64, description="{condition: count}; see GET /v1/conditions"
    )
    model: ModelName | None = Field(
        None, description='model version id or "name:version"; default: the newest published version offering every requested condition'
    )
    format: ImageFormat = ImageFormat.png
    heatmaps: StrictBool = True
    seed: Annotated[StrictInt, Field(ge=0, le=MAX_SEED)] | None = Field(
        None, description="fixes every image (same model + seed + index = same pixels); default: random 63-bit"
    )
    purpose: Purpose = Field(
        description="what the images are for (read by the reviewing admins)"
    )


class Progress(BaseModel):
    done: int
    total: int


class Owner(BaseModel):
    id: uuid.UUID
    name: str


class DatasetLinks(BaseModel):
    self: str
    card: str
    download: str


class DatasetPublic(BaseModel):
    id: uuid.UUID
    status: DatasetStatus
    owner: Owner
    model: ModelRef
    conditions: dict[str, int]
    total_images: int
    format: ImageFormat
    heatmaps: bool
    seed: int
    purpose: str
    progress: Progress
    error: str | None
    progress_note: str | None
    created_at: datetime
    updated_at: datetime
    links: DatasetLinks


class DatasetList(BaseModel):
    datasets: list[DatasetPublic]


class DownloadFile(BaseModel):
    name: str = Field(description="path inside the dataset, e.g. shards/shard-00000.tar")
    size: int
    sha256: str
    url: str = Field(description="SigV4 presigned GET, valid until expires_at")


class DownloadManifest(BaseModel):
    dataset_id: uuid.UUID
    expires_at: datetime
    expires_in: int
    files: list[DownloadFile]


class RevokeRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"reason": "the researcher's ethics approval was withdrawn"}]},
    )
    reason: Reason


class RetryRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"note": "storage outage over; resuming from the finished shards"}]},
    )
    note: Note | None = None


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"reason": "requested the wrong condition"}]})
    reason: Note | None = None
