"""Privacy evidence for the admin review screen (hospital zone only: the pair image shows real
training images and must never reach the release bucket or a researcher)."""

from __future__ import annotations

import io

import numpy as np


def _counts(scores, edges: np.ndarray) -> list[int]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    s = np.clip(s[np.isfinite(s)], edges[0], edges[-1])  # the last bin also holds everything above it
    return np.histogram(s, bins=edges)[0].astype(int).tolist()


def evidence_payload(calibration, dataset_scores, *, rejected_scores=None, n_rejected: int | None = None) -> dict:
    """JSON-able summary: this dataset's nearest-training-image scores on the calibration's bins,
    beside the calibrated same-/different-patient distributions, and how many images were filtered.

    ``dataset_scores``: scores of the released images; ``rejected_scores``: scores of the images the
    filter dropped (``Replaced.rejected_scores``); ``n_rejected`` defaults to their number.
    """
    edges = np.asarray(calibration.bin_edges, dtype=np.float64)
    released = np.asarray(dataset_scores, dtype=np.float64).reshape(-1)
    rejected = np.zeros(0) if rejected_scores is None else np.asarray(rejected_scores, dtype=np.float64).reshape(-1)
    n_rej = int(len(rejected) if n_rejected is None else n_rejected)
    n_gen = len(released) + n_rej
    fin = released[np.isfinite(released)]
    return {
        "threshold": float(calibration.threshold),
        "bin_edges": [float(e) for e in edges],
        "last_bin_open": True,  # scores above the last edge are counted in the last bin
        "same_patient_counts": list(calibration.same_patient_counts),
        "different_patient_counts": list(calibration.different_patient_counts),
        "dataset_counts": _counts(released, edges),
        "rejected_counts": _counts(rejected, edges),
        "n_released": int(len(released)),
        "n_rejected": n_rej,
        "n_generated": int(n_gen),
        "fraction_filtered": float(n_rej / n_gen) if n_gen else 0.0,
        "released_min_score": float(fin.min()) if len(fin) else None,
        "released_score_quantiles": (
            {str(q): float(v) for q, v in zip((0.01, 0.05, 0.5), np.quantile(fin, (0.01, 0.05, 0.5)))} if len(fin) else {}
        ),
        "calibration": {
            "same_patient_catch_rate": calibration.same_patient_catch_rate,
            "different_patient_flag_rate": calibration.different_patient_flag_rate,
            "targets_met": calibration.targets_met,
            "rule": calibration.rule,
            "method": calibration.method,
        },
    }


def render_pairs_png(synthetic_uint8, real_uint8, scores, *, captions=None, columns: int = 4) -> bytes:
    """PNG grid: each synthetic image beside its nearest real training image, with a caption strip
    under the pair ("#k  score 0.734", or ``captions[k]``). Grayscale, one pixel per pixel."""
    from PIL import Image, ImageDraw

    syn = np.asarray(synthetic_uint8, dtype=np.uint8)
    real = np.asarray(real_uint8, dtype=np.uint8)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if syn.ndim == 2:
        syn, real = syn[None], real[None]
    if syn.shape != real.shape or len(scores) != len(syn):
        raise ValueError(f"shapes differ: synthetic {syn.shape}, real {real.shape}, {len(scores)} scores")
    k, h, w = syn.shape
    gap, strip = 4, 14
    cell_w, cell_h = 2 * w + gap, h + strip
    cols = max(1, min(columns, k))
    rows = max(1, -(-k // cols))
    canvas = np.full((rows * (cell_h + gap) + gap, cols * (cell_w + gap) + gap), 255, dtype=np.uint8)
    for i in range(k):  # at most a few dozen pairs: a loop over tiles is fine here
        r, c = divmod(i, cols)
        y0, x0 = gap + r * (cell_h + gap), gap + c * (cell_w + gap)
        canvas[y0 : y0 + h, x0 : x0 + w] = syn[i]
        canvas[y0 : y0 + h, x0 + w + gap : x0 + 2 * w + gap] = real[i]
    im = Image.fromarray(canvas)  # uint8 2-D -> mode "L"
    draw = ImageDraw.Draw(im)
    for i in range(k):
        r, c = divmod(i, cols)
        y0, x0 = gap + r * (cell_h + gap), gap + c * (cell_w + gap)
        text = captions[i] if captions is not None else f"#{i} synthetic | real   score {scores[i]:.3f}"
        draw.text((x0 + 1, y0 + h + 1), text, fill=0)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
