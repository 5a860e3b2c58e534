"""One shard of a dataset: generate → Grad-CAM → memorisation filter → encode → tar → upload → record.

Image i of a dataset is a pure function of (model version, dataset seed, i, attempt): its condition
comes from the image order (docs/architecture.md: the spec's conditions in the model's order, each a
contiguous block) and its latent from ``latent_batch(seed, i, attempt)``. The filter bumps the
attempt of an image that lands too close to a training image and generates it again; nothing else
can change the bytes, so a shard written again after a crash is identical.

The device work (generator, Grad-CAM, nearest-neighbour search) runs in batches — on a GPU in bf16
with batches of ``settings.generation_batch_size`` — while a process pool encodes the previous batch.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import delete, func, insert, select

from service import layout, queue
from service.datasets.models import Dataset, DatasetStatus, Shard, ShardStatus, SyntheticImage
from service.db import session_scope
from service.modelversions.models import ModelVersion
from service.settings import get_settings
from service.timeutil import utcnow
from workers import leases, retry, state
from workers.config import worker_settings
from workers.encode import (
    EncodeContext,
    EncodedImage,
    ImageRecord,
    ShardTarWriter,
    encode_chunk,
    heatmaps_to_uint8,
)

log = logging.getLogger("xraysynth.worker.shard")

ENCODE_CHUNK = 64  # images per pool task
PREVIEW_PER_CONDITION = 8  # the first images of each condition block go into the preview grid
CLOSEST_K = 8  # per shard: the synthetic images nearest the training set, for the admin evidence
CHECK_STATUS_EVERY_S = 1.0


# -- image order (the rule itself: service.layout.image_blocks) ---------------------------------

def block_of(indices: np.ndarray, blocks: list[tuple[str, int]]) -> np.ndarray:
    """Block number (position in ``blocks``) of each image index."""
    ends = np.cumsum([n for _, n in blocks])
    return np.searchsorted(ends, np.asarray(indices), side="right")


def preview_indices(blocks: list[tuple[str, int]], per_condition: int = PREVIEW_PER_CONDITION) -> np.ndarray:
    starts = np.concatenate([[0], np.cumsum([n for _, n in blocks])[:-1]])
    return np.concatenate([s + np.arange(min(n, per_condition)) for s, (_, n) in zip(starts, blocks)]).astype(np.int64)


# -- the device stage -------------------------------------------------------------------------

def prepare_for_inference(bundle):
    """Channels-last weights: oneDNN (CPU) and tensor cores (GPU) run these convolutions about twice as
    fast in NHWC. Done once per loaded model; the pixels depend on it, so every path uses it."""
    import torch

    for m in (bundle.generator, bundle.classifier):
        m.to(memory_format=torch.channels_last)
    return bundle


class DeviceStage:
    """Generator + Grad-CAM for (indices, attempts), as ``filter_and_replace`` wants it.

    Returns (pixels uint8 [b,128,128], embeddings, {"heatmaps": uint8 [b,32,32], "probs": float32 [b]}).
    The classifier looks at the quantised image (what is released), so its probability, heatmap and
    embedding describe the released pixels exactly.
    """

    def __init__(self, loaded, seed: int, blocks: list[tuple[str, int]]):
        import torch

        self.torch = torch
        self.bundle = loaded.bundle
        self.device = torch.device(loaded.device)
        self.seed = int(seed)
        self.blocks = blocks
        lookup = {c: i for i, c in enumerate(self.bundle.conditions)}
        self.block_class = np.array([lookup[c] for c, _ in blocks], dtype=np.int64)
        self.cuda = self.device.type == "cuda"

    def classes(self, indices: np.ndarray) -> np.ndarray:
        return self.block_class[block_of(indices, self.blocks)]

    def _autocast(self):
        torch = self.torch
        if self.cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def _to_device(self, a: np.ndarray):
        t = self.torch.from_numpy(a)
        if self.cuda:  # pinned host memory: the copy overlaps with the previous kernel
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    def generate(self, indices: np.ndarray, attempts: np.ndarray):
        """Generator only -> (quantised float images in [-1,1] [b,1,128,128], pixels uint8 [b,128,128])."""
        from models.latents import latent_batch

        torch = self.torch
        z = self._to_device(latent_batch(self.seed, indices, attempts, self.bundle.nz))
        cls = self._to_device(self.classes(indices))
        y = torch.nn.functional.one_hot(cls, len(self.bundle.conditions)).float()
        with torch.inference_mode(), self._autocast():
            x = self.bundle.generator(z, y)
            # Same arithmetic as models.imaging.to_uint8/from_uint8, without a host round trip.
            q = ((x.float().clamp(-1, 1) + 1.0) * 127.5).round()
            pixels = q.to(torch.uint8)[:, 0].cpu().numpy()
            xq = q / 127.5 - 1.0
        return xq, pixels, cls

    def gradcam(self, xq, cls):
        from models.gradcam import gradcam_batch

        with self._autocast():
            return gradcam_batch(self.bundle.classifier, xq, cls, out_size=32)

    def __call__(self, indices, attempts):
        indices = np.asarray(indices, dtype=np.int64)
        xq, pixels, cls = self.generate(indices, np.asarray(attempts, dtype=np.int64))
        r = self.gradcam(xq, cls)
        extra = {
            "heatmaps": heatmaps_to_uint8(r.heatmaps.float().cpu().numpy()),
            "probs": r.probs.float().cpu().numpy().astype(np.float32),
        }
        return pixels, r.embeddings, extra


# -- one shard --------------------------------------------------------------------------------

@dataclass
class ShardJob:
    dataset_id: uuid.UUID
    shard_index: int
    start: int
    stop: int
    seed: int
    blocks: list[tuple[str, int]]
    format: str
    heatmaps: bool
    total_images: int


@dataclass
class Evidence:
    """Per-shard privacy facts for the admin evidence (hospital zone; synthetic pixels only)."""

    rejected_scores: list[np.ndarray] = field(default_factory=list)
    n_generated: int = 0
    n_rejected: int = 0
    closest: dict = field(default_factory=dict)  # index, attempt, score, nearest_row, pixels (top CLOSEST_K)
    preview: dict = field(default_factory=lambda: {"index": [], "pixels": [], "heatmaps": []})

    def add_closest(self, index, attempt, score, nearest_row, pixels) -> None:
        new = {"index": index, "attempt": attempt, "score": score, "nearest_row": nearest_row, "pixels": pixels}
        if self.closest:
            new = {k: np.concatenate([self.closest[k], v]) for k, v in new.items()}
        keep = np.argsort(new["score"], kind="stable")[:CLOSEST_K]
        self.closest = {k: np.asarray(v)[keep] for k, v in new.items()}

    def to_npz(self) -> bytes:
        buf = io.BytesIO()
        c = self.closest or {"index": np.zeros(0, np.int64), "attempt": np.zeros(0, np.int64),
                             "score": np.zeros(0, np.float32), "nearest_row": np.zeros(0, np.int64),
                             "pixels": np.zeros((0, 128, 128), np.uint8)}
        p = self.preview
        np.savez(
            buf,
            rejected_scores=np.concatenate(self.rejected_scores) if self.rejected_scores else np.zeros(0, np.float32),
            n_generated=np.int64(self.n_generated),
            n_rejected=np.int64(self.n_rejected),
            closest_index=c["index"], closest_attempt=c["attempt"], closest_score=c["score"],
            closest_row=c["nearest_row"], closest_pixels=c["pixels"],
            # one array per batch, of different lengths where condition blocks start mid-batch
            preview_index=np.concatenate(p["index"]).astype(np.int64) if p["index"] else np.zeros(0, np.int64),
            preview_pixels=np.concatenate(p["pixels"]) if p["pixels"] else np.zeros((0, 128, 128), np.uint8),
            preview_heatmaps=np.concatenate(p["heatmaps"]) if p["heatmaps"] else np.zeros((0, 32, 32), np.uint8),
        )
        return buf.getvalue()


@dataclass
class ShardOutput:
    sha256: str
    size: int
    rows: list[tuple]  # provenance rows, in index order (see PROVENANCE_COLUMNS)
    evidence: Evidence


PROVENANCE_COLUMNS = ("dataset_id", "index", "shard_index", "condition", "seed", "attempt", "sha256",
                      "probability", "nn_distance")


class Stop(Exception):
    """The dataset left `generating` (cancelled, failed) while the shard ran."""

    def __init__(self, status: DatasetStatus | None):
        super().__init__(f"dataset is {status.value if status else 'gone'}")
        self.status = status


def produce_shard(
    job: ShardJob,
    loaded,
    out: io.BufferedIOBase,
    *,
    pool: Executor | None,
    batch_size: int,
    max_attempts: int,
    uid_root: str,
    on_batch: Callable[[int], None] | None = None,
) -> ShardOutput:
    """Write the shard's tar to ``out`` and return its hash and the provenance rows."""
    from models.privacy import filter_and_replace

    stage = DeviceStage(loaded, job.seed, job.blocks)
    conditions = [c for c, _ in job.blocks]
    series_of = {c: loaded.bundle.conditions.index(c) + 1 for c in conditions}
    ctx = EncodeContext(str(job.dataset_id), job.format, loaded.meta, layout.key_width(job.total_images), uid_root, series_of)
    preview_set = preview_indices(job.blocks)

    n = job.stop - job.start
    attempts = np.zeros(n, np.int64)
    probs = np.zeros(n, np.float32)
    scores = np.zeros(n, np.float32)
    digests: list[str | None] = [None] * n
    evidence = Evidence()
    writer = ShardTarWriter(out)
    in_flight: deque = deque()
    max_in_flight = 2 * max(1, getattr(pool, "_max_workers", 1))  # bounds memory, keeps the pool busy

    def drain(limit: int) -> None:
        while len(in_flight) > limit:
            item = in_flight.popleft()
            encoded: list[EncodedImage] = item.result() if hasattr(item, "result") else item
            for e in encoded:
                writer.add_sample(e)
                digests[e.index - job.start] = e.sha256

    for b0 in range(job.start, job.stop, batch_size):
        idx = np.arange(b0, min(b0 + batch_size, job.stop), dtype=np.int64)
        rep = filter_and_replace(stage, loaded.privacy_index, loaded.calibration, idx, max_attempts=max_attempts)
        sl = slice(b0 - job.start, b0 - job.start + len(idx))
        attempts[sl], probs[sl], scores[sl] = rep.attempts, rep.extra["probs"], rep.score
        evidence.n_generated += rep.n_generated
        evidence.n_rejected += rep.n_rejected
        evidence.rejected_scores.append(rep.rejected_scores.astype(np.float32))
        k = np.argsort(rep.score, kind="stable")[:CLOSEST_K]
        evidence.add_closest(idx[k], rep.attempts[k], rep.score[k], rep.nearest_index[k], rep.pixels[k])
        tiles = np.flatnonzero(np.isin(idx, preview_set))
        if len(tiles):
            evidence.preview["index"].append(idx[tiles])
            evidence.preview["pixels"].append(rep.pixels[tiles])
            evidence.preview["heatmaps"].append(rep.extra["heatmaps"][tiles])

        cls = block_of(idx, job.blocks)
        heat = rep.extra["heatmaps"] if job.heatmaps else None
        records = [
            ImageRecord(int(i), conditions[cls[j]], job.seed, int(rep.attempts[j]), float(rep.extra["probs"][j]),
                        float(rep.score[j]), rep.pixels[j], None if heat is None else heat[j])
            for j, i in enumerate(idx)
        ]
        for c0 in range(0, len(records), ENCODE_CHUNK):
            chunk = records[c0 : c0 + ENCODE_CHUNK]
            in_flight.append(pool.submit(encode_chunk, chunk, ctx) if pool is not None else encode_chunk(chunk, ctx))
        drain(max_in_flight)
        if on_batch is not None:
            on_batch(int(idx[-1]) + 1 - job.start)
    drain(0)
    sha256, size = writer.close()
    cls = block_of(np.arange(job.start, job.stop), job.blocks)
    rows = [
        (job.dataset_id, job.start + j, job.shard_index, conditions[cls[j]], job.seed, int(attempts[j]), digests[j],
         float(probs[j]), float(scores[j]))
        for j in range(n)
    ]
    return ShardOutput(sha256, size, rows, evidence)


# -- recording --------------------------------------------------------------------------------

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


# -- the task body ----------------------------------------------------------------------------

_pool = None
_pool_lock = threading.Lock()  # a threads pool may start two shard tasks at once


def encode_pool():
    """One process pool per worker process, made on first use. Spawned, never forked: the parent may
    hold a CUDA context and torch's thread pools, which a fork would copy in a broken state."""
    global _pool
    import multiprocessing as mp

    size = worker_settings().encode_pool_size
    # A prefork child is daemonic and may not have children; its siblings already share the cores.
    if size == 0 or mp.current_process().daemon:
        return None
    with _pool_lock:
        if _pool is None:
            from concurrent.futures import ProcessPoolExecutor

            _pool = ProcessPoolExecutor(max_workers=size, mp_context=mp.get_context("spawn"))
        return _pool


def shutdown_pool() -> None:
    global _pool
    if _pool is not None:
        _pool.shutdown(wait=False, cancel_futures=True)
        _pool = None


def device_batch_size(device: str) -> int:
    s = get_settings()
    return s.generation_batch_size if device == "cuda" else min(s.generation_batch_size, worker_settings().cpu_batch_size)


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
    from workers import cleanup
    from workers.model_store import load_model

    job_name = leases.shard_job(dataset_id, shard_index)
    leases.clear_queued(job_name)
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
        leases.count_start(job_name)
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
                state.heartbeat(dataset_id)
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
            retry.upload_fileobj(settings.release_bucket, layout.shard_key(dataset_id, shard_index), tmp,
                                 "application/x-tar", output.sha256, **hooks)
        retry.put_object(settings.private_bucket, layout.fragment_key(dataset_id, shard_index), output.evidence.to_npz(),
                         "application/octet-stream", **hooks)
        outcome, all_done = record_shard(job, output)
        if outcome == DatasetStatus.cancelled.value:
            cleanup.discard_outputs(dataset_id)
        if outcome == "recorded":
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
        state.fail(dataset_id, f"shard {shard_index}: {exc}")
        return "failed"
    except Exception as exc:  # noqa: BLE001 — any other error fails the dataset with a reason, not silently
        from models.privacy import MemorisationError

        if isinstance(exc, MemorisationError):
            reason = f"shard {shard_index}: memorisation filter: {exc}"
        else:
            log.exception("dataset %s shard %d failed", dataset_id, shard_index)
            reason = f"shard {shard_index}: {type(exc).__name__}: {str(exc)[:300]}"
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
    if not any(leases.queued([job])) and not any(leases.leased([job])):
        state.enqueue(queue.FINALISE_DATASET, dataset_id, job=job)

