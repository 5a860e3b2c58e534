"""Small database and queue steps the worker's tasks share: enqueue by name, heartbeat, progress
notes, failing a dataset through the transition table. Each is its own short transaction."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime

from sqlalchemy import select, update

from service import queue
from service.audit.service import SYSTEM
from service.datasets.models import Dataset, DatasetStatus
from service.datasets.transitions import transition
from service.db import session_scope
from service.timeutil import utcnow
from workers import leases

log = logging.getLogger("xraysynth.worker")

MAX_REASON = 1900  # Dataset.error is String(2000)


def _send(messages: list[tuple[str, list, str]]) -> None:
    """(task, args, job) each: marked queued first, so a worker that takes a message at once clears a
    marker that exists (a marker set after it would outlive the task and hide the job from the sweeper
    for hours); a message that could not be sent takes its marker back."""
    leases.mark_queued(*[job for _, _, job in messages])
    for n, (task, args, _) in enumerate(messages):
        try:
            queue.client().send_task(task, args=args, queue=queue.QUEUE)
        except Exception:
            leases.clear_queued(*[job for _, _, job in messages[n:]])
            raise


def enqueue(task: str, *args, job: str) -> None:
    """Send a task by name and remember it is queued (the sweeper re-sends lost ones)."""
    _send([(task, [str(a) for a in args], job)])


def enqueue_shards(dataset_id: uuid.UUID, shard_indices: list[int]) -> None:
    _send([(queue.GENERATE_SHARD, [str(dataset_id), i], leases.shard_job(dataset_id, i)) for i in shard_indices])


def lock_dataset(session, dataset_id: uuid.UUID) -> Dataset | None:
    return session.scalar(
        select(Dataset).where(Dataset.id == dataset_id).with_for_update().execution_options(populate_existing=True)
    )


def status_of(dataset_id: uuid.UUID) -> DatasetStatus | None:
    with session_scope() as s:
        st = s.scalar(select(Dataset.status).where(Dataset.id == dataset_id))
        return DatasetStatus(st) if st is not None else None


def heartbeat(dataset_id: uuid.UUID, *, note: str | None | bool = False) -> None:
    """Sign of life (the sweeper fails datasets that stop showing one); optionally set/clear the note."""
    values: dict = {"heartbeat_at": utcnow()}
    if note is not False:
        values["progress_note"] = note
    with session_scope() as s:
        s.execute(update(Dataset).where(Dataset.id == dataset_id).values(**values))


def storage_hooks(dataset_id: uuid.UUID) -> dict:
    """Progress shows a storage outage while a call retries, and forgets it once storage answers."""

    def on_outage(since: datetime, error: str) -> None:
        heartbeat(dataset_id, note=f"storage unreachable since {since:%Y-%m-%d %H:%M:%S} UTC ({error}), retrying")

    def on_recovered() -> None:
        heartbeat(dataset_id, note=None)

    return {"on_outage": on_outage, "on_recovered": on_recovered}


def fail(dataset_id: uuid.UUID, reason: str) -> bool:
    """generating -> failed with a reason (no-op in any other state). True if it changed."""
    reason = reason[:MAX_REASON]
    with session_scope() as s:
        ds = lock_dataset(s, dataset_id)
        if ds is None or ds.status != DatasetStatus.generating:
            return False
        transition(s, ds, DatasetStatus.failed, actor=SYSTEM, reason=reason)
        ds.progress_note = None
    log.error("dataset %s failed: %s", dataset_id, reason)
    return True
