"""Finalise: the admins' privacy evidence (private bucket): the memorisation audit over every released
image and the closest synthetic/real pairs, with the real neighbours from the hospital's training set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from service import layout
from service.datasets.models import Dataset
from service.modelversions.models import ModelVersion
from service.settings import get_settings
from service.timeutil import utcnow
from workers import retry

PAIRS_K = 8


def _real_images(mv: ModelVersion, index, rows: np.ndarray) -> tuple[np.ndarray, str]:
    """The nearest training images, from the hospital's training set when this worker can read it and it
    is the one the model was trained on; otherwise the 32 px view the privacy index holds."""
    tdir = Path(get_settings().trainset_dir)
    train_rows = index.rows[np.clip(rows, 0, None)]
    try:
        info = json.loads((tdir / "trainset.json").read_text())
        if info.get("fingerprint") == mv.training_fingerprint:
            images = np.load(tdir / "images.npy", mmap_mode="r")
            return np.asarray(images[train_rows], dtype=np.uint8), "training set (128 px)"
    except (OSError, ValueError):
        pass
    f = index.pixels[np.clip(rows, 0, None)].reshape(-1, 32, 32)
    lo, hi = f.min(axis=(1, 2), keepdims=True), f.max(axis=(1, 2), keepdims=True)
    small = np.rint(255 * (f - lo) / np.maximum(hi - lo, 1e-6)).astype(np.uint8)
    return np.kron(small, np.ones((4, 4), np.uint8)), "privacy index view (32 px)"


def build_evidence(ds: Dataset, mv: ModelVersion, table: dict, frag: dict, blocks) -> tuple[dict, bytes, dict]:
    # torch: the worker parent imports this module before it forks, so models/ loads on first use
    from models.privacy import Calibration, PrivacyIndex, evidence_payload, render_pairs_png

    settings = get_settings()
    calibration = Calibration.from_dict(mv.privacy_calibration)
    index_bytes = retry.get_object(settings.private_bucket, mv.privacy_index_key)
    index = PrivacyIndex.load(index_bytes)
    payload = evidence_payload(calibration, table["nn"], rejected_scores=frag["rejected_scores"],
                               n_rejected=frag["n_rejected"])
    order = np.argsort(frag["closest_score"], kind="stable")[:PAIRS_K]
    rows = frag["closest_row"][order].astype(np.int64)
    closest = [
        {
            "index": int(frag["closest_index"][j]),
            "attempt": int(frag["closest_attempt"][j]),
            "condition": str(table["condition"][int(frag["closest_index"][j])]),
            "score": float(frag["closest_score"][j]),
            "nearest_training_row": int(index.rows[r]) if r >= 0 else None,
            "nearest_image_id": str(index.image_ids[r]) if r >= 0 else None,
        }
        for j, r in zip(order, rows)
    ]
    real, real_source = _real_images(mv, index, rows)
    reid, reid_order, reid_rows = _reid_pairs(calibration, index, table, frag)
    real_reid = _real_images(mv, index, reid_rows)[0] if len(reid_rows) else np.zeros((0, 128, 128), np.uint8)
    # One sheet, copy pairs first, then the closest pairs in the verifier's space (labelled "re-id").
    pairs_png = render_pairs_png(
        np.concatenate([frag["closest_pixels"][order], frag["reid_pixels"][reid_order] if len(reid_order) else
                        np.zeros((0, *frag["closest_pixels"].shape[1:]), np.uint8)]),
        np.concatenate([real, real_reid]),
        np.concatenate([frag["closest_score"][order], np.asarray([c["distance"] for c in reid], np.float64)]),
        captions=[f"#{c['index']} score {c['score']:.3f} | train row {c['nearest_training_row']}" for c in closest]
        + [f"re-id #{c['index']} d {c['distance']:.3f} | train row {c['nearest_training_row']}" for c in reid],
    )
    payload.update({
        "dataset_id": str(ds.id),
        "model_version": {"id": str(mv.id), "name": mv.name, "version": mv.version},
        "every_image_checked": True,
        "closest_pairs": closest,
        "checks": _checks(calibration, frag, reid),
        "pairs_png": {"key": layout.evidence_key(ds.id, layout.EVIDENCE_PAIRS), "real_images": real_source, "k": len(closest)},
        "generated_at": utcnow().isoformat(),
    })
    summary = {
        "n_generated": int(frag["n_generated"]),
        "n_released": int(len(table["nn"])),
        "n_rejected": int(frag["n_rejected"]),
        "fraction_filtered": payload["fraction_filtered"],
        "threshold": float(calibration.threshold),
        "released_min_score": payload["released_min_score"],
        "images_regenerated": int((table["attempt"] > 0).sum()),
        "every_image_checked": True,
        "n_rejected_copy": int(frag.get("n_rejected_copy", 0)),
        "n_rejected_reidentification": int(frag.get("n_rejected_reid", 0)),
        "reidentification_check": bool(calibration.reid_threshold is not None and index.has_reid),
        "reidentification_threshold": calibration.reid_threshold,
        "dcr_share_closer_to_training": payload["checks"]["dcr"].get("share_closer_to_training"),
    }
    return payload, pairs_png, summary


def _reid_pairs(calibration, index, table, frag) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """The released images closest to a training patient in the verifier's space, with where their
    distance falls in the calibrated distribution of new patients' nearest distances."""
    dist = np.asarray(frag.get("reid_distance", np.zeros(0)), np.float64)
    order = np.argsort(dist, kind="stable")[:PAIRS_K]
    order = order[np.isfinite(dist[order])]
    rows = np.asarray(frag.get("reid_row", np.zeros(0, np.int64)), np.int64)[order]
    r = calibration.reidentification or {}
    edges, counts = np.asarray(r.get("bin_edges", []), np.float64), np.asarray(r.get("new_patient_counts", []), np.float64)
    out = []
    for j, row in zip(order, rows):
        below = float(counts[: max(int(np.searchsorted(edges, dist[j], side="right")) - 1, 0)].sum() / counts.sum()) if counts.sum() else None
        out.append({
            "index": int(frag["reid_index"][j]), "attempt": int(frag["reid_attempt"][j]),
            "condition": str(table["condition"][int(frag["reid_index"][j])]), "distance": float(dist[j]),
            "threshold": calibration.reid_threshold,
            "new_patients_closer": below,  # share of new patients' images nearer to a training image (bin resolution)
            "nearest_training_row": int(index.rows[row]) if row >= 0 else None,
            "nearest_image_id": str(index.image_ids[row]) if row >= 0 else None,
        })
    return out, order, rows


def _checks(calibration, frag, reid_pairs) -> dict:
    r = calibration.reidentification or {}
    dcr_n = int(frag.get("dcr_n", 0))
    return {
        "copy": {"threshold": float(calibration.threshold), "n_rejected": int(frag.get("n_rejected_copy", 0))},
        "reidentification": {
            "available": bool(r), "threshold": r.get("threshold"), "verifier": r.get("name"),
            "n_rejected": int(frag.get("n_rejected_reid", 0)), "closest_pairs": reid_pairs,
            "bin_edges": r.get("bin_edges", []), "new_patient_counts": r.get("new_patient_counts", []),
            "same_patient_counts": r.get("same_patient_counts", []),
        },
        "dcr": {"n_images": dcr_n, **({"share_closer_to_training": frag["dcr_closer_to_training"] / dcr_n} if dcr_n else {}),
                "note": "released images closer (verifier space) to a training image than to a held-out one, training side "
                        "size-matched to the held-out set; ~50 % means no memorisation of identity"},
    }
