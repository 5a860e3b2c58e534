"""Admin evidence: score histogram on the calibration's bins, and the pair image."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from models.privacy import evidence_payload, render_pairs_png


def test_evidence_payload(calibration):
    released = np.array([0.9, 1.2, 1.2, 5.0])  # 5.0 lands in the last (open) bin
    rejected = np.array([0.0, 0.02])  # both in the first bin [0, 0.05)
    p = evidence_payload(calibration, released, rejected_scores=rejected)
    json.dumps(p)  # JSON-able
    assert p["bin_edges"] == calibration.bin_edges
    assert sum(p["dataset_counts"]) == 4 and p["dataset_counts"][-1] == 1
    assert sum(p["rejected_counts"]) == 2 and p["rejected_counts"][0] == 2
    assert p["n_rejected"] == 2 and p["n_generated"] == 6 and p["fraction_filtered"] == 2 / 6
    assert p["same_patient_counts"] == calibration.same_patient_counts
    assert p["threshold"] == calibration.threshold and p["released_min_score"] == 0.9


def test_render_pairs_png():
    rng = np.random.default_rng(0)
    syn = rng.integers(0, 256, (5, 128, 128), dtype=np.uint8)
    real = rng.integers(0, 256, (5, 128, 128), dtype=np.uint8)
    png = render_pairs_png(syn, real, [0.91, 1.2, 0.7, 2.0, 1.5])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    im = Image.open(io.BytesIO(png))
    a = np.asarray(im)
    assert im.mode == "L" and a.shape[1] > 4 * 2 * 128  # 4 pairs per row
    # The first pair sits in the top-left tile: synthetic on the left, its real neighbour beside it.
    np.testing.assert_array_equal(a[4 : 4 + 128, 4 : 4 + 128], syn[0])
    np.testing.assert_array_equal(a[4 : 4 + 128, 4 + 132 : 4 + 260], real[0])
