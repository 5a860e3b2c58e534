"""Recording a shard: its provenance rows (COPY) and its status, in one transaction."""

from __future__ import annotations

from sqlalchemy import delete, func, insert, select

from service.datasets.models import DatasetStatus, Shard, ShardStatus, SyntheticImage
from service.db import session_scope
from service.timeutil import utcnow
from workers import state
from workers.produce import PROVENANCE_COLUMNS, ShardJob, ShardOutput


def bulk_insert_provenance(session, rows: list[tuple], table: str = "synthetic_images") -> None:
    """COPY on Postgres (a million rows a dataset); executemany elsewhere (SQLite fallback)."""
    session.flush()
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        raw = conn.connection.dbapi_connection
        cols = ", ".join(f'"{c}"' for c in PROVENANCE_COLUMNS)
        with raw.cursor() as cur, cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    elif rows:
        session.execute(insert(SyntheticImage), [dict(zip(PROVENANCE_COLUMNS, r)) for r in rows])


def record_shard(job: ShardJob, output: ShardOutput) -> tuple[str, bool]:
    """Replace the shard's provenance rows and mark it done, in one transaction.

    Returns (outcome, all_done): outcome "recorded", "already_done" (another worker won) or the dataset's
    status if it is no longer generating.
    """
    with session_scope() as s:
        ds = state.lock_dataset(s, job.dataset_id)
        if ds is None:
            return "gone", False
        if ds.status != DatasetStatus.generating:
            return ds.status.value, False
        shard = s.scalar(
            select(Shard).where(Shard.dataset_id == job.dataset_id, Shard.index == job.shard_index).with_for_update()
        )
        if shard is None:
            return "gone", False
        if shard.status == ShardStatus.done:
            return "already_done", False
        # Idempotent: rows a crashed attempt may have left behind go first (same transaction).
        s.execute(delete(SyntheticImage).where(SyntheticImage.dataset_id == job.dataset_id,
                                               SyntheticImage.shard_index == job.shard_index))
        bulk_insert_provenance(s, output.rows)
        shard.status = ShardStatus.done
        shard.sha256, shard.size = output.sha256, output.size
        shard.rejected_images = output.evidence.n_rejected
        shard.updated_at = utcnow()
        s.flush()
        done = s.scalar(select(func.coalesce(func.sum(Shard.stop - Shard.start), 0))
                        .where(Shard.dataset_id == job.dataset_id, Shard.status == ShardStatus.done))
        pending = s.scalar(select(func.count()).select_from(Shard)
                           .where(Shard.dataset_id == job.dataset_id, Shard.status != ShardStatus.done))
        ds.done_images = int(done)
        ds.heartbeat_at = utcnow()
        ds.progress_note = None
        return "recorded", pending == 0
