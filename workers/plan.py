"""approved → generating: split the dataset into shards (one task each) and enqueue them.

On an admin retry (failed → approved) the shards already recorded are kept — after checking their
objects are still in storage — so generation resumes where it stopped.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import func, select

from service import layout, queue
from service.audit.service import SYSTEM
from service.datasets.models import Dataset, DatasetStatus, Shard, ShardStatus
from service.datasets.transitions import transition
from service.db import session_scope
from service.modelversions.models import ModelVersion
from service.settings import get_settings
from service.timeutil import utcnow
from workers import leases, retry, state

log = logging.getLogger("xraysynth.worker.plan")


def shard_ranges(total: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, total)) for s in range(0, total, shard_size)]


def _missing_outputs(dataset_id: uuid.UUID, done: list[tuple[int, str, int | None]]) -> list[int]:
    """Done shards whose tar (right size) or evidence fragment is gone: they must be made again."""
    settings = get_settings()
    hooks = state.storage_hooks(dataset_id)
    missing = []
    for index, key, size in done:
        head = retry.head_object(settings.release_bucket, key, **hooks)
        if head is None or (size is not None and int(head["ContentLength"]) != size):
            missing.append(index)
        elif retry.head_object(settings.private_bucket, layout.fragment_key(dataset_id, index), **hooks) is None:
            missing.append(index)
    return missing


def plan_dataset(dataset_id: uuid.UUID) -> str:
    job = leases.plan_job(dataset_id)
    with leases.Lease(job) as lease:
        if not lease.held:
            return "planned by another worker"
        return _plan(dataset_id)


def _plan(dataset_id: uuid.UUID) -> str:
    with session_scope() as s:
        ds = s.get(Dataset, dataset_id)
        if ds is None or ds.status != DatasetStatus.approved:
            return ds.status.value if ds else "gone"
        done = [(sh.index, sh.object_key, sh.size) for sh in ds.shards if sh.status == ShardStatus.done]
    # Storage checks outside the row lock (they can take a while on a big dataset or a slow store).
    try:
        missing = _missing_outputs(dataset_id, done) if done else []
    except retry.StorageUnavailable as exc:
        missing, storage_error = [], str(exc)
    else:
        storage_error = None

    with session_scope() as s:
        ds = state.lock_dataset(s, dataset_id)
        if ds is None or ds.status != DatasetStatus.approved:
            return ds.status.value if ds else "gone"
        mv = s.get(ModelVersion, ds.model_version_id)
        shards = list(s.scalars(select(Shard).where(Shard.dataset_id == dataset_id).order_by(Shard.index)))
        if not shards:
            # The plan is stored with the dataset: a later change of shard_size never reshapes it.
            for k, (start, stop) in enumerate(shard_ranges(ds.total_images, get_settings().shard_size)):
                s.add(Shard(dataset_id=ds.id, index=k, start=start, stop=stop, seed_base=ds.seed,
                            object_key=layout.shard_key(ds.id, k), status=ShardStatus.pending, rejected_images=0))
            s.flush()
        for sh in shards:
            if sh.index in missing:
                sh.status, sh.sha256, sh.size = ShardStatus.pending, None, None
        s.flush()
        n_shards = s.scalar(select(func.count()).select_from(Shard).where(Shard.dataset_id == dataset_id))
        pending = list(s.scalars(select(Shard.index).where(Shard.dataset_id == dataset_id,
                                                           Shard.status == ShardStatus.pending).order_by(Shard.index)))
        ds.done_images = int(s.scalar(select(func.coalesce(func.sum(Shard.stop - Shard.start), 0))
                                      .where(Shard.dataset_id == dataset_id, Shard.status == ShardStatus.done)))
        transition(s, ds, DatasetStatus.generating, actor=SYSTEM,
                   details={"shards": int(n_shards), "pending_shards": len(pending),
                            "resumed": bool(done), "regenerate": sorted(missing)})
        ds.heartbeat_at = utcnow()
        ds.progress_note = None
        problem = None
        if not mv.privacy_index_key or not mv.privacy_calibration:
            problem = "the model version has no privacy index: the memorisation filter cannot run"
        elif storage_error:
            problem = storage_error
    if problem:
        state.fail(dataset_id, problem)
        return "failed"

    if pending:
        leases.reset_starts(*[leases.shard_job(dataset_id, i) for i in pending])
        state.enqueue_shards(dataset_id, pending)
    else:
        state.enqueue(queue.FINALISE_DATASET, dataset_id, job=leases.finalise_job(dataset_id))
    log.info("dataset %s: %d shards, %d to generate", dataset_id, n_shards, len(pending))
    return "planned"
