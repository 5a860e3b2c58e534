"""Shared test factories: rows that other tests (API, workers, CLI) build on, written straight to the
real database. No mocks: helpers here talk to the same Postgres/Redis/S3 the suite starts."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

DEFAULT_CALIBRATION = {
    "threshold": 0.42,
    "same_patient_catch_rate": 0.96,
    "different_patient_flag_rate": 0.01,
    "targets_met": True,
    "target_catch_rate": 0.95,
    "target_flag_rate": 0.01,
    "rule": "largest score flagging at most 1% of nearest different-patient images",
    "method": "test calibration",
    "bin_edges": [0.0, 0.5, 1.0, 1.5],
    "same_patient_counts": [40, 3, 1],
    "different_patient_counts": [1, 30, 69],
    "n_same_patient_images": 44,
    "n_different_patient_images": 100,
}

DEFAULT_METRICS = {
    "fid_ratio_to_real_floor": {"Mass": 2.1, "No Finding": 1.2},
    "precision": 0.9,
    "recall": 0.72,
    "membership_inference": {
        "target": 0.6,
        "target_met": True,
        "attacks": {
            "distance": {"attack": "distance (combined score)", "auc": 0.51, "target_met": True},
            "discriminator": {"attack": "discriminator score", "auc": 0.53, "target_met": True},
        },
    },
}


def make_model_version(
    session: Session,
    *,
    conditions: Sequence[str] = ("No Finding", "Mass", "Hernia"),
    patients_per_condition: Mapping[str, int] | None = None,
    status: str = "published",
    with_privacy_index: bool = True,
    name: str = "cxr-dcgan",
    version: str | None = None,
    with_calibration: bool = True,
    dp_epsilon: float | None = None,
    dp_delta: float | None = None,
    metrics: dict | None = None,
    card: dict | None = None,
    published_at=None,
):
    """Insert a ModelVersion row (flushed, not committed). Keys and hashes are dummies: API tests never
    load the checkpoint; the worker's tests register real bundles."""
    from service.modelversions.models import ModelStatus, ModelVersion
    from service.timeutil import utcnow

    version = version or f"0.{uuid.uuid4().hex[:6]}"
    ppc = dict(patients_per_condition) if patients_per_condition is not None else {c: 100 for c in conditions}
    status = ModelStatus(status)
    mv = ModelVersion(
        name=name,
        version=version,
        architecture="cdcgan-128",
        image_size=128,
        conditions=list(conditions),
        checkpoint_key=f"models/{name}/{version}/bundle.pt",
        checkpoint_sha256="0" * 64,
        privacy_index_key=f"models/{name}/{version}/privacy_index.npz" if with_privacy_index else None,
        privacy_index_sha256=("1" * 64) if with_privacy_index else None,
        training_fingerprint="f" * 64,
        patients_per_condition=ppc,
        dp_epsilon=dp_epsilon,
        dp_delta=dp_delta,
        metrics=dict(DEFAULT_METRICS if metrics is None else metrics),
        privacy_calibration=dict(DEFAULT_CALIBRATION) if with_calibration else None,
        card=dict(card or {"licences": ["CC BY 4.0"], "citations": ["Test et al. 2026"], "limitations": "test"}),
        status=status,
        published_at=published_at or (utcnow() if status != ModelStatus.draft else None),
    )
    session.add(mv)
    session.flush()
    return mv


def make_dataset(
    session: Session,
    *,
    account_id: uuid.UUID,
    model_version_id: uuid.UUID,
    spec: Mapping[str, int] | None = None,
    status: str = "pending_review",
    seed: int = 1234,
    purpose: str = "A test dataset for evaluating a nodule detector.",
):
    """Insert a Dataset row at a given status (creation, not a transition: use transitions.transition
    to move it afterwards)."""
    from service.datasets.models import Dataset, DatasetStatus, ImageFormat

    spec = dict(spec or {"Mass": 3})
    ds = Dataset(
        account_id=account_id,
        model_version_id=model_version_id,
        spec=spec,
        total_images=sum(spec.values()),
        format=ImageFormat.png,
        heatmaps=True,
        seed=seed,
        purpose=purpose,
        status=DatasetStatus(status),
        done_images=0,
    )
    session.add(ds)
    session.flush()
    return ds


def row_counts(session: Session) -> dict[str, int]:
    """Rows in every table: compare before/after a refused request to prove nothing was written."""
    from service.tables import Base

    return {t.name: session.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}


def put_release_object(key: str, data: bytes, *, sha256_metadata: bool = True, content_type: str = "application/octet-stream") -> str:
    """Write an object to the release bucket the way the worker does (sha256 as object metadata)."""
    from service.settings import get_settings
    from service.storage import internal_client

    digest = hashlib.sha256(data).hexdigest()
    extra = {"Metadata": {"sha256": digest}} if sha256_metadata else {}
    internal_client().put_object(Bucket=get_settings().release_bucket, Key=key, Body=data, ContentType=content_type, **extra)
    return digest


def put_private_object(key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
    from service.settings import get_settings
    from service.storage import internal_client

    internal_client().put_object(Bucket=get_settings().private_bucket, Key=key, Body=data, ContentType=content_type)


def queued_tasks(redis_url: str, queue: str = "generation") -> list[tuple[str, list]]:
    """(task name, args) of the Celery messages waiting in a Redis queue. kombu keeps each queue as a
    Redis list named after it; a message is JSON with the task name in headers and a base64 body of
    [args, kwargs, embed]."""
    import redis

    out = []
    for raw in redis.Redis.from_url(redis_url).lrange(queue, 0, -1):
        msg = json.loads(raw)
        body = msg["body"]
        if msg.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        out.append((msg["headers"]["task"], args))
    return out
