"""One shard of a dataset, the generate_shard task: lease → load the model → produce (device stage,
filter, encode, tar) → upload → record → enqueue finalise after the last shard.

Idempotent and safe to kill at any point: the object key is deterministic, the shard's database status
is checked first, and a shard written again after a crash is byte-identical (workers/produce.py).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from service import layout, queue
from service.datasets.models import Dataset, DatasetStatus, Shard, ShardStatus
from service.db import session_scope
from service.modelversions.models import ModelVersion
from service.settings import get_settings
from workers import cleanup, leases, metrics, outages, retry, state
from workers.config import worker_settings
from workers.device import device_batch_size
from workers.model_store import load_model
from workers.produce import ShardJob, encode_pool, produce_shard
from workers.record import record_shard

log = logging.getLogger("xraysynth.worker.shard")

CHECK_STATUS_EVERY_S = 1.0


class Stop(Exception):
    """The dataset left `generating` (cancelled, failed) while the shard ran."""

    def __init__(self, status: DatasetStatus | None):
        super().__init__(f"dataset is {status.value if status else 'gone'}")
        self.status = status


def load_job(dataset_id: uuid.UUID, shard_index: int) -> tuple[ShardJob | None, str, uuid.UUID | None]:
    """(job, why-not, model version id) from the database; job None when there is nothing to do."""
    with session_scope() as s:
        ds = s.get(Dataset, dataset_id)
        if ds is None:
            return None, "gone", None
        if ds.status != DatasetStatus.generating:
            return None, ds.status.value, None
        shard = s.scalar(select(Shard).where(Shard.dataset_id == dataset_id, Shard.index == shard_index))
        if shard is None:
            return None, "no such shard", None
        if shard.status == ShardStatus.done:
            return None, "already_done", None
        mv = s.get(ModelVersion, ds.model_version_id)
        job = ShardJob(ds.id, shard.index, shard.start, shard.stop, int(ds.seed), layout.image_blocks(ds.spec, mv.conditions),
                       ds.format.value if hasattr(ds.format, "value") else str(ds.format), bool(ds.heatmaps),
                       ds.total_images)
        return job, "", mv.id


def run_shard(dataset_id: uuid.UUID, shard_index: int) -> str:
    """The generate_shard task: idempotent, safe to run twice at once, safe to kill at any point."""
    job_name = leases.shard_job(dataset_id, shard_index)
    lease = leases.Lease(job_name)
    if not lease.acquire():
        return "leased by another worker"
    try:
        job, why, mv_id = load_job(dataset_id, shard_index)
        if job is None:
            if why == DatasetStatus.cancelled.value:
                cleanup.discard_outputs(dataset_id)
            elif why == "already_done":
                maybe_finalise(dataset_id)
            return why
        if leases.count_start(job_name) > 1:
            metrics.retried("task")  # this shard started before and did not finish
        hooks = state.storage_hooks(dataset_id)
        loaded = load_model(mv_id, storage_hooks=hooks)
        ws = worker_settings()
        last_check = [time.monotonic()]

        def on_batch(done_in_shard: int) -> None:
            # Heartbeat and cancellation check, at most once a second; an optional pause between batches.
            now = time.monotonic()
            if now - last_check[0] >= CHECK_STATUS_EVERY_S:
                last_check[0] = now
                st = state.status_of(dataset_id)
                if st != DatasetStatus.generating:
                    raise Stop(st)
                # Progress counts recorded shards only (so it never goes back when a shard is redone);
                # the note says how far the shard in hand is, or a CPU box shows 0 for a minute a shard.
                state.heartbeat(dataset_id, note=f"images {job.start + 1}-{job.stop}: {done_in_shard} of "
                                                 f"{job.stop - job.start} generated")
            if ws.batch_pause_s:
                time.sleep(ws.batch_pause_s)

        t0 = time.monotonic()
        with tempfile.TemporaryFile(prefix="xraysynth-shard-", dir=os.environ.get("XRAYSYNTH_TMPDIR")) as tmp:
            output = produce_shard(
                job, loaded, tmp, pool=encode_pool(), batch_size=device_batch_size(loaded.device),
                max_attempts=ws.max_filter_attempts, uid_root=ws.dicom_uid_root, on_batch=on_batch,
            )
            if state.status_of(dataset_id) != DatasetStatus.generating:
                raise Stop(state.status_of(dataset_id))
            settings = get_settings()
            with metrics.stage("upload"):
                retry.upload_fileobj(settings.release_bucket, layout.shard_key(dataset_id, shard_index), tmp,
                                     "application/x-tar", output.sha256, **hooks)
        with metrics.stage("upload"):
            retry.put_object(settings.private_bucket, layout.fragment_key(dataset_id, shard_index),
                             output.evidence.to_npz(), "application/octet-stream", **hooks)
        with metrics.stage("record"):
            outcome, all_done = record_shard(job, output)
        if outcome == DatasetStatus.cancelled.value:
            cleanup.discard_outputs(dataset_id)
        if outcome == "recorded":
            metrics.shard_recorded(job.stop - job.start, {"copy": output.evidence.n_rejected_copy,
                                                           "reid": output.evidence.n_rejected_reid})
            leases.reset_starts(job_name)
            log.info("dataset %s shard %d: %d images (%d rejected by the filter) in %.1f s, sha256 %s",
                     dataset_id, shard_index, job.stop - job.start, output.evidence.n_rejected,
                     time.monotonic() - t0, output.sha256[:12])
        if all_done:
            state.enqueue(queue.FINALISE_DATASET, dataset_id, job=leases.finalise_job(dataset_id))
        return outcome
    except Stop as stop:
        if stop.status == DatasetStatus.cancelled:
            cleanup.discard_outputs(dataset_id)
        return str(stop)
    except retry.StorageUnavailable as exc:
        metrics.shard_finished("failed")
        state.fail(dataset_id, f"shard {shard_index}: {exc}")
        return "failed"
    except Exception as exc:  # noqa: BLE001 — any other error fails the dataset with a reason, not silently
        if isinstance(exc, DBAPIError):
            metrics.error("db")
        if outages.is_outage(exc):
            metrics.shard_finished("interrupted")
            return outages.interrupted(f"dataset {dataset_id} shard {shard_index}", exc)
        # torch: the worker parent imports this module before it forks, so models/ loads on first use
        from models.privacy import MemorisationError

        if isinstance(exc, MemorisationError):
            reason = f"shard {shard_index}: memorisation filter: {exc}"
        else:
            log.exception("dataset %s shard %d failed", dataset_id, shard_index)
            reason = f"shard {shard_index}: {type(exc).__name__}: {str(exc)[:300]}"
        metrics.shard_finished("failed")
        state.fail(dataset_id, reason)
        return "failed"
    finally:
        lease.release()


def maybe_finalise(dataset_id: uuid.UUID) -> None:
    """Enqueue finalise if every shard is done and no finalise is queued or running (a lost message)."""
    with session_scope() as s:
        st = s.scalar(select(Dataset.status).where(Dataset.id == dataset_id))
        pending = s.scalar(select(func.count()).select_from(Shard)
                           .where(Shard.dataset_id == dataset_id, Shard.status != ShardStatus.done))
    if st != DatasetStatus.generating or pending:
        return
    job = leases.finalise_job(dataset_id)
    if not leases.in_flight([job])[0]:
        state.enqueue(queue.FINALISE_DATASET, dataset_id, job=job)
