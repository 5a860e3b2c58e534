"""A released dataset as the researcher sees it: signed download URLs and the dataset card.

Only the release bucket is read here; nothing in this module can reach the private (hospital) zone.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import timedelta

from botocore.exceptions import ClientError
from pydantic import ValidationError
from sqlalchemy.orm import Session

from service import layout, storage
from service.accounts.models import Account, Role
from service.audit.service import Actor, record
from service.datasets.card import DatasetCard, heatmap_faithfulness
from service.datasets.models import Dataset, DatasetStatus, ShardStatus
from service.datasets.service import to_public
from service.errors import Conflict, Gone, Unprocessable
from service.modelversions import service as models_service
from service.modelversions.models import ModelVersion
from service.reviews import service as reviews_service
from service.settings import get_settings
from service.timeutil import utcnow

log = logging.getLogger("xraysynth.release")

def _not_downloadable(ds: Dataset) -> None:
    if ds.status == DatasetStatus.revoked:
        raise Gone("this dataset has been revoked; its files were deleted", code="revoked")
    if ds.status != DatasetStatus.ready:
        raise Conflict(f"dataset is {ds.status.value}; files can be downloaded once it is ready", code="not_ready")


def object_digest(bucket: str, key: str) -> tuple[int, str] | None:
    """(size, sha256) of an object: the worker stores sha256 as object metadata (x-amz-meta-sha256);
    without it the object is read once and hashed. None if the object does not exist."""
    client = storage.internal_client()
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    size = int(head["ContentLength"])
    digest = (head.get("Metadata") or {}).get("sha256")
    if not digest:
        h = hashlib.sha256()
        for chunk in client.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(1 << 20):
            h.update(chunk)
        digest = h.hexdigest()
    return size, digest


def download_manifest(session: Session, *, dataset: Dataset, actor: Actor, expires_in: int | None) -> dict:
    settings = get_settings()
    expires_in = settings.download_expiry_default_s if expires_in is None else expires_in
    if not 1 <= expires_in <= settings.download_expiry_max_s:
        raise Unprocessable(
            f"expires_in must be between 1 and {settings.download_expiry_max_s} seconds",
            field="expires_in", code="validation_error",
        )
    _not_downloadable(dataset)

    bucket, prefix = settings.release_bucket, layout.release_prefix(dataset.id)
    entries: list[tuple[str, str, int, str]] = []  # (name, key, size, sha256)
    for name in layout.RELEASE_FILES:
        found = object_digest(bucket, prefix + name)
        if found is None:
            log.warning("dataset %s is ready but %s is missing from the release bucket", dataset.id, name)
            continue
        entries.append((name, prefix + name, *found))
    for shard in dataset.shards:
        if shard.status != ShardStatus.done:
            continue
        size, digest = shard.size, shard.sha256
        if size is None or digest is None:
            found = object_digest(bucket, shard.object_key)
            if found is None:
                log.warning("dataset %s: shard %s is missing from the release bucket", dataset.id, shard.index)
                continue
            size, digest = found
        name = shard.object_key[len(prefix):] if shard.object_key.startswith(prefix) else shard.object_key.rsplit("/", 1)[-1]
        entries.append((name, shard.object_key, size, digest))

    expires_at = (utcnow() + timedelta(seconds=expires_in)).replace(microsecond=0)
    files = [
        {"name": name, "size": size, "sha256": digest,
         "url": storage.presign_get(bucket, key, expires_in, filename=name.rsplit("/", 1)[-1])}
        for name, key, size, digest in entries
    ]
    # Every issue of signed URLs is on the record (who could fetch what, until when).
    record(session, actor=actor, action="dataset.download_urls", target_type="dataset", target_id=dataset.id,
           details={"count": len(files), "expires_in": expires_in, "expires_at": expires_at.isoformat()})
    return {"dataset_id": dataset.id, "expires_at": expires_at, "expires_in": expires_in, "files": files}


def dataset_card(session: Session, *, dataset: Dataset, viewer: Account) -> dict:
    """The published card once the dataset is ready (the worker's dataset_card.json); before that, a
    provisional card from the database."""
    if dataset.status == DatasetStatus.ready:
        key = layout.release_key(dataset.id, layout.CARD_JSON)
        try:
            card = json.loads(storage.get_bytes(get_settings().release_bucket, key))
            if isinstance(card, dict):
                return DatasetCard.model_validate({"provisional": False, **card}).to_json()
        except ClientError:
            log.warning("dataset %s is ready but its dataset_card.json is missing", dataset.id)
        except ValidationError:
            log.warning("dataset %s: dataset_card.json does not have the dataset card's shape", dataset.id)
        except ValueError:
            log.warning("dataset %s: dataset_card.json is not valid JSON", dataset.id)

    mv = session.get(ModelVersion, dataset.model_version_id)
    public = to_public(session, dataset)
    min_patients = get_settings().min_training_patients
    faithfulness = heatmap_faithfulness(mv.card, dataset.spec) if dataset.heatmaps else None
    return DatasetCard(
        provisional=True,
        note="provisional: built from the request; the final card is published with the release",
        dataset_id=str(dataset.id),
        status=dataset.status.value,
        model={
            "id": str(mv.id), "name": mv.name, "version": mv.version, "architecture": mv.architecture,
            "image_size": mv.image_size, "training_fingerprint": mv.training_fingerprint,
            "metrics": models_service.sanitise({k: v for k, v in (mv.metrics or {}).items() if k != "membership_inference"}),
            "privacy": models_service.privacy_summary(mv),
            "card": models_service.researcher_card(mv.card or {}),
            "conditions": models_service.condition_offers(mv, min_patients=min_patients),
        },
        request={
            "conditions": dict(layout.image_blocks(dataset.spec, mv.conditions)), "total_images": dataset.total_images, "format": dataset.format.value,
            "heatmaps": dataset.heatmaps, "seed": dataset.seed, "purpose": dataset.purpose,
            "requested_by": public["owner"]["name"], "requested_at": dataset.created_at.isoformat(),
        },
        review=reviews_service.review_state(session, dataset=dataset, viewer=viewer, researcher_view=viewer.role != Role.admin),
        privacy_summary=dataset.privacy_summary,
        progress=public["progress"],
        **({} if faithfulness is None else {"heatmap_faithfulness": faithfulness}),
    ).to_json()
