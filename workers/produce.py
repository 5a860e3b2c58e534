"""The produce loop of a shard: device batches → memorisation filter → encode (process pool) → tar.

Image i of a dataset is a pure function of (model version, dataset seed, i, attempt): its condition
comes from the image order (service.layout.image_blocks) and its latent from
``latent_batch(seed, i, attempt)``. The filter bumps the attempt of an image that lands too close to a
training image and generates it again; nothing else can change the bytes, so a shard written again
after a crash is identical. The process pool encodes one batch while the device makes the next.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import threading
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service import layout
from workers import metrics
from workers.config import worker_settings
from workers.device import DeviceStage, block_of
from workers.encode import EncodeContext, EncodedImage, ImageRecord, ShardTarWriter, encode_chunk

ENCODE_CHUNK = 64  # images per pool task
PREVIEW_PER_CONDITION = 8  # the first images of each condition block go into the preview grid
CLOSEST_K = 8  # per shard: the synthetic images nearest the training set, for the admin evidence


def preview_indices(blocks: list[tuple[str, int]], per_condition: int = PREVIEW_PER_CONDITION) -> np.ndarray:
    starts = np.concatenate([[0], np.cumsum([n for _, n in blocks])[:-1]])
    return np.concatenate([s + np.arange(min(n, per_condition)) for s, (_, n) in zip(starts, blocks)]).astype(np.int64)


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
    # Per check: rejections of the copy check and of the re-identification check, the released images
    # closest to a training patient in the verifier's space, and the DCR counts.
    n_rejected_copy: int = 0
    n_rejected_reid: int = 0
    closest_reid: dict = field(default_factory=dict)  # index, attempt, distance, nearest_row, pixels
    dcr_closer_to_training: int = 0
    dcr_n: int = 0

    def add_closest_reid(self, index, attempt, distance, nearest_row, pixels) -> None:
        new = {"index": index, "attempt": attempt, "distance": distance, "nearest_row": nearest_row, "pixels": pixels}
        if self.closest_reid:
            new = {k: np.concatenate([self.closest_reid[k], v]) for k, v in new.items()}
        keep = np.argsort(new["distance"], kind="stable")[:CLOSEST_K]
        self.closest_reid = {k: np.asarray(v)[keep] for k, v in new.items()}

    def _reid_arrays(self) -> dict:
        c = self.closest_reid or {"index": np.zeros(0, np.int64), "attempt": np.zeros(0, np.int64),
                                  "distance": np.zeros(0, np.float32), "nearest_row": np.zeros(0, np.int64),
                                  "pixels": np.zeros((0, 128, 128), np.uint8)}
        return {"n_rejected_copy": np.int64(self.n_rejected_copy), "n_rejected_reid": np.int64(self.n_rejected_reid),
                "reid_index": c["index"], "reid_attempt": c["attempt"], "reid_distance": c["distance"],
                "reid_row": c["nearest_row"], "reid_pixels": c["pixels"],
                "dcr_closer_to_training": np.int64(self.dcr_closer_to_training), "dcr_n": np.int64(self.dcr_n)}

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
            **self._reid_arrays(),
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
    # torch: the worker parent imports this module before it forks, so models/ loads on first use
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
        with metrics.stage("filter"):
            rep = filter_and_replace(stage, loaded.privacy_index, loaded.calibration, idx, max_attempts=max_attempts)
        sl = slice(b0 - job.start, b0 - job.start + len(idx))
        attempts[sl], probs[sl], scores[sl] = rep.attempts, rep.extra["probs"], rep.score
        evidence.n_generated += rep.n_generated
        evidence.n_rejected += rep.n_rejected
        evidence.rejected_scores.append(rep.rejected_scores.astype(np.float32))
        k = np.argsort(rep.score, kind="stable")[:CLOSEST_K]
        evidence.add_closest(idx[k], rep.attempts[k], rep.score[k], rep.nearest_index[k], rep.pixels[k])
        evidence.n_rejected_copy += rep.n_rejected_copy
        evidence.n_rejected_reid += rep.n_rejected_reid
        if getattr(loaded.privacy_index, "has_reid", False):
            k = np.argsort(rep.reid_distance, kind="stable")[:CLOSEST_K]
            evidence.add_closest_reid(idx[k], rep.attempts[k], rep.reid_distance[k], rep.reid_index[k], rep.pixels[k])
            dcr = loaded.privacy_index.dcr_share(rep.pixels)
            if dcr is not None:
                evidence.dcr_closer_to_training += int(round(dcr["share_closer_to_training"] * dcr["n_images"]))
                evidence.dcr_n += dcr["n_images"]
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
        # Encode: what the shard waits for (inline encoding, or the pool's results and the tar writes).
        with metrics.stage("encode"):
            for c0 in range(0, len(records), ENCODE_CHUNK):
                chunk = records[c0 : c0 + ENCODE_CHUNK]
                in_flight.append(pool.submit(encode_chunk, chunk, ctx) if pool is not None else encode_chunk(chunk, ctx))
            drain(max_in_flight)
        if on_batch is not None:
            on_batch(int(idx[-1]) + 1 - job.start)
    with metrics.stage("encode"):
        drain(0)
        sha256, size = writer.close()
    cls = block_of(np.arange(job.start, job.stop), job.blocks)
    rows = [
        (job.dataset_id, job.start + j, job.shard_index, conditions[cls[j]], job.seed, int(attempts[j]), digests[j],
         float(probs[j]), float(scores[j]))
        for j in range(n)
    ]
    return ShardOutput(sha256, size, rows, evidence)


_pool = None
_pool_lock = threading.Lock()  # a threads pool may start two shard tasks at once


def encode_pool():
    """One process pool per worker process, made on first use. Spawned, never forked: the parent may
    hold a CUDA context and torch's thread pools, which a fork would copy in a broken state."""
    global _pool
    size = worker_settings().encode_pool_size
    # A prefork child is daemonic and may not have children; its siblings already share the cores.
    if size == 0 or mp.current_process().daemon:
        return None
    with _pool_lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(max_workers=size, mp_context=mp.get_context("spawn"))
        return _pool


def shutdown_pool() -> None:
    global _pool
    if _pool is not None:
        _pool.shutdown(wait=False, cancel_futures=True)
        _pool = None
