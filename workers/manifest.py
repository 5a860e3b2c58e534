"""Finalise, step one: the manifest (streamed from the provenance rows, checked row by row) and the
per-shard evidence fragments, merged. Either refuses the release when the memorisation filter did not
provably run on every image."""

from __future__ import annotations

import csv
import io
import uuid

import numpy as np
from sqlalchemy import select

from service import layout
from service.datasets.models import Dataset, Shard, SyntheticImage
from service.db import session_scope
from service.settings import get_settings
from workers import retry


class NotReleasable(Exception):
    """A check before release failed; the message is the dataset's failure reason."""


def write_manifest(dataset_id: uuid.UUID, ds: Dataset, shards: list[Shard], out) -> dict:
    """Stream the provenance rows (index order) into manifest.csv, checking each; return numpy columns."""
    total = ds.total_images
    width = layout.key_width(total)
    fmt = str(getattr(ds.format, "value", ds.format))
    shard_of = np.zeros(total, np.int64)
    for sh in shards:
        shard_of[sh.start : sh.stop] = sh.index
    nn = np.full(total, np.nan, np.float64)
    prob = np.full(total, np.nan, np.float64)
    cond = np.empty(total, dtype=object)
    attempts = np.zeros(total, np.int64)
    text = io.TextIOWrapper(out, encoding="utf-8", newline="")
    w = csv.writer(text, lineterminator="\n")
    w.writerow(layout.MANIFEST_COLUMNS)
    expected, unchecked = 0, 0
    cols = (SyntheticImage.index, SyntheticImage.condition, SyntheticImage.seed, SyntheticImage.attempt,
            SyntheticImage.sha256, SyntheticImage.probability, SyntheticImage.nn_distance)
    with session_scope() as s:
        rows = s.execute(select(*cols).where(SyntheticImage.dataset_id == dataset_id)
                         .order_by(SyntheticImage.index).execution_options(yield_per=20_000))
        for index, condition, seed, attempt, sha, p, d in rows:
            if index != expected:
                raise NotReleasable(f"provenance rows are not the indices 0..{total - 1} (found {index} where "
                                    f"{expected} was expected)")
            expected += 1
            if d is None:
                unchecked += 1
            key = layout.sample_key(index, width)
            w.writerow([index, layout.shard_name(int(shard_of[index])), layout.image_file(key, fmt), condition, seed,
                        attempt, sha, layout.heatmap_file(key) if ds.heatmaps else "", "" if p is None else f"{p:.6f}"])
            nn[index] = np.nan if d is None else d
            prob[index] = np.nan if p is None else p
            cond[index] = condition
            attempts[index] = attempt
    text.flush()
    text.detach()
    if expected != total:
        raise NotReleasable(f"{expected} provenance rows for {total} images")
    if unchecked:
        raise NotReleasable(f"{unchecked} images have no memorisation-filter score: the filter did not run on them")
    return {"nn": nn, "prob": prob, "condition": cond, "attempt": attempts}


def load_fragments(dataset_id: uuid.UUID, shards: list[Shard], hooks: dict) -> dict:
    bucket = get_settings().private_bucket
    parts = {k: [] for k in ("rejected_scores", "closest_index", "closest_attempt", "closest_score", "closest_row",
                             "closest_pixels", "preview_index", "preview_pixels", "preview_heatmaps")}
    n_generated = n_rejected = 0
    reid_parts = {k: [] for k in ("reid_index", "reid_attempt", "reid_distance", "reid_row", "reid_pixels")}
    counts = dict.fromkeys(("n_rejected_copy", "n_rejected_reid", "dcr_closer_to_training", "dcr_n"), 0)
    missing = []
    for sh in shards:
        key = layout.fragment_key(dataset_id, sh.index)
        if retry.head_object(bucket, key, **hooks) is None:
            missing.append(sh.index)
            continue
        with np.load(io.BytesIO(retry.get_object(bucket, key, **hooks)), allow_pickle=False) as z:
            for k in parts:
                parts[k].append(z[k])
            n_generated += int(z["n_generated"])
            n_rejected += int(z["n_rejected"])
            for k in reid_parts:  # fragments written before the re-identification check lack these
                if k in z.files:
                    reid_parts[k].append(z[k])
            for k in counts:
                counts[k] += int(z[k]) if k in z.files else 0
    if missing:
        raise NotReleasable(f"the filter evidence of shards {missing[:20]} is missing; an admin retry regenerates them")
    out = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    out["n_generated"], out["n_rejected"] = n_generated, n_rejected
    out.update({k: np.concatenate(v) if v else np.zeros(0) for k, v in reid_parts.items()})
    out.update(counts)
    return out
