"""A cancelled dataset leaves nothing behind: objects already written (release shards, private
evidence) are deleted, then its shard and provenance rows, with an audit event."""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import delete, func, select

from service import layout
from service.audit.service import SYSTEM, record
from service.datasets.models import DatasetStatus, Shard, SyntheticImage
from service.db import session_scope
from service.settings import get_settings
from workers import retry, state

log = logging.getLogger("xraysynth.worker.cleanup")


def discard_outputs(dataset_id: uuid.UUID) -> int:
    """Delete everything generated for a cancelled dataset (no-op for any other status). Idempotent."""
    if state.status_of(dataset_id) != DatasetStatus.cancelled:
        return 0
    settings = get_settings()
    try:
        deleted = retry.delete_prefix(settings.release_bucket, layout.release_prefix(dataset_id))
        deleted += retry.delete_prefix(settings.private_bucket, layout.evidence_prefix(dataset_id))
    except retry.StorageUnavailable:
        log.warning("dataset %s: could not delete its objects yet; the sweeper tries again", dataset_id)
        return 0
    with session_scope() as s:
        ds = state.lock_dataset(s, dataset_id)
        if ds is None or ds.status != DatasetStatus.cancelled:
            return deleted
        n_shards = s.scalar(select(func.count()).select_from(Shard).where(Shard.dataset_id == dataset_id))
        if not n_shards and not deleted:
            return 0
        s.execute(delete(SyntheticImage).where(SyntheticImage.dataset_id == dataset_id))
        s.execute(delete(Shard).where(Shard.dataset_id == dataset_id))
        ds.done_images = 0
        ds.progress_note = None
        record(s, actor=SYSTEM, action="dataset.outputs_deleted", target_type="dataset", target_id=dataset_id,
               details={"objects_deleted": deleted, "shards": int(n_shards or 0)})
    log.info("dataset %s cancelled: %d objects and %d shard rows deleted", dataset_id, deleted, n_shards or 0)
    return deleted
