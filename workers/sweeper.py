"""Nothing stays stuck: a timer thread in every worker sweeps once per interval (once cluster-wide).

* approved datasets that nobody planned (the API's enqueue was lost) → plan again;
* generating datasets: shards that are neither done, queued, reserved nor leased (their worker died,
  or the message was lost) → enqueue again; a shard whose worker died ``max_shard_starts`` times → fail;
  every shard done but no finalise queued or running → finalise;
* generating datasets with no sign of life for ``settings.stale_generation_after_s`` and nothing
  queued or running → fail with a reason (an admin retry resumes them);
* cancelled datasets that still have outputs → delete them;
* leases and reservations whose holder was a process of this machine that has died → released at
  once, their jobs re-sent in the same sweep instead of after their TTL and a second look.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select

from service import queue
from service.datasets.models import Dataset, DatasetStatus, Shard, ShardStatus
from service.db import session_scope
from service.settings import get_settings
from service.timeutil import utcnow
from workers import cleanup, leases, state
from workers.config import worker_settings

log = logging.getLogger("xraysynth.worker.sweeper")

FIRST_SWEEP_AFTER_S = 2.0


@dataclass
class SweepReport:
    planned: list[str] = field(default_factory=list)
    requeued_shards: list[tuple[str, int]] = field(default_factory=list)
    finalised: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)  # jobs whose holder died on this machine


def sweep(*, force: bool = False) -> SweepReport | None:
    """One pass. Returns None when another worker swept within the interval (unless forced)."""
    ws = worker_settings()
    if not force and not leases.try_singleton("sweep", ws.sweep_interval_s * 0.9):
        return None
    report = SweepReport(released=leases.release_dead_holders(ws.sweep_interval_s))
    now = utcnow()
    settings = get_settings()
    grace = timedelta(seconds=max(ws.lease_ttl_s, ws.sweep_interval_s))
    stale = timedelta(seconds=settings.stale_generation_after_s)

    with session_scope() as s:
        approved = list(s.scalars(select(Dataset.id).where(Dataset.status == DatasetStatus.approved,
                                                           Dataset.updated_at < now - grace)))
        generating = list(s.execute(select(Dataset.id, Dataset.heartbeat_at, Dataset.updated_at)
                                    .where(Dataset.status == DatasetStatus.generating)))
        cancelled = list(s.scalars(select(Dataset.id).where(Dataset.status == DatasetStatus.cancelled)
                                   .where(Dataset.id.in_(select(Shard.dataset_id).distinct()))))
        pending = {}
        for ds_id, index in s.execute(select(Shard.dataset_id, Shard.index)
                                      .where(Shard.status == ShardStatus.pending)
                                      .where(Shard.dataset_id.in_([g[0] for g in generating]))):
            pending.setdefault(ds_id, []).append(index)

    for ds_id in approved:
        job = leases.plan_job(ds_id)
        if not leases.in_flight([job])[0]:
            state.enqueue(queue.PLAN_DATASET, ds_id, job=job)
            report.planned.append(str(ds_id))

    for ds_id, heartbeat_at, updated_at in generating:
        last_sign = max(t for t in (heartbeat_at, updated_at) if t is not None)
        shards = sorted(pending.get(ds_id, []))
        # Work still to do: the pending shards, or once they are all done, the finalise step.
        jobs = [leases.shard_job(ds_id, i) for i in shards] or [leases.finalise_job(ds_id)]
        live = leases.in_flight(jobs)
        if not any(live) and now - last_sign > stale:
            reason = (f"no progress for {int((now - last_sign).total_seconds())} s and no worker on it "
                      f"(limit {settings.stale_generation_after_s} s); an admin retry resumes it")
            if state.fail(ds_id, reason):
                report.failed.append(str(ds_id))
            continue
        # Lost = neither queued, reserved nor leased at two sweeps in a row (a plan or shard that is just being
        # handed over is not mistaken for lost work).
        lost = leases.confirm_lost([j for j, alive in zip(jobs, live) if not alive], ws.sweep_interval_s)
        if not lost:
            continue
        if not shards:
            state.enqueue(queue.FINALISE_DATASET, ds_id, job=lost[0])
            report.finalised.append(str(ds_id))
            continue
        crashed = [j for j, n in zip(lost, leases.starts(lost)) if n >= ws.max_shard_starts]
        if crashed:
            reason = (f"shard {crashed[0].rsplit(':', 1)[1]} was started {ws.max_shard_starts} times and its "
                      f"worker never finished it (killed, or out of memory?)")
            if state.fail(ds_id, reason):
                report.failed.append(str(ds_id))
            continue
        indices = [int(j.rsplit(":", 1)[1]) for j in lost]
        state.enqueue_shards(ds_id, indices)
        report.requeued_shards.extend((str(ds_id), i) for i in indices)

    for ds_id in cancelled:
        if cleanup.discard_outputs(ds_id):
            report.cleaned.append(str(ds_id))

    if any((report.planned, report.requeued_shards, report.finalised, report.failed, report.cleaned,
            report.released)):
        log.info("sweep: %s", report)
    return report


class SweeperThread(threading.Thread):
    """The worker's own timer (no Celery beat to deploy): sweeps soon after the worker starts (a worker
    restarted after a crash takes its predecessor's work back at once), then every ``sweep_interval_s``."""

    def __init__(self, interval_s: float | None = None):
        super().__init__(name="xraysynth-sweeper", daemon=True)
        self.interval = interval_s or worker_settings().sweep_interval_s
        self.stopped = threading.Event()

    def run(self) -> None:
        # The first sweep is forced: the worker this one replaces may have swept a moment before it
        # died, and its turn would otherwise hold this sweep back for an interval.
        wait, first = min(self.interval, FIRST_SWEEP_AFTER_S), True
        while not self.stopped.wait(wait):
            try:
                sweep(force=first)
            except Exception:  # noqa: BLE001 — a broken sweep must not kill the thread; next tick tries again
                log.exception("sweep failed")
            wait, first = self.interval, False

    def stop(self) -> None:
        self.stopped.set()
