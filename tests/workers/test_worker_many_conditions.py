"""A realistic research request — a dozen conditions, counts that divide neither the device batch nor
the shard — on a real worker: it reaches ready, downloads whole, and its preview shows every condition.

Small specs (one or two conditions) never put a condition block's start in the middle of a device
batch, which is what once made every such request fail at shard 0."""

from __future__ import annotations

import csv
import io

import numpy as np
from PIL import Image

from models.conditions import CONDITIONS
from tests.workers.conftest import approve, release_object, request_dataset, wait_status
from workers.preview import PREVIEW_COLUMNS, TILE

COUNTS = (37, 66, 101)
SPEC = {c: COUNTS[k % len(COUNTS)] for k, c in enumerate(CONDITIONS[:12])}


def _band_tiles(preview: np.ndarray, n_blocks: int) -> list[int]:
    """Per condition band of the preview grid: how many image tiles hold pixels (white = missing)."""
    gap, label = 4, 16
    band = label + 2 * TILE + gap
    filled = []
    for b in range(n_blocks):
        y0 = gap + b * (band + gap) + label
        row = preview[y0 : y0 + TILE]
        tiles = [row[:, gap + c * (TILE + gap) : gap + c * (TILE + gap) + TILE] for c in range(PREVIEW_COLUMNS)]
        filled.append(sum(int((t != 255).any()) for t in tiles if t.size))
    return filled


def test_a_request_over_twelve_conditions_with_uneven_counts_reaches_ready_with_every_condition_previewed(
        model_version, researcher, admin, api, start_worker):
    ds_id = request_dataset(api, researcher, SPEC, seed=99, fmt="png", heatmaps=True)
    approve(api, admin, ds_id)
    # Batches of 48 and shards of 250: condition blocks start mid-batch and straddle shard edges.
    worker = start_worker(XRAYSYNTH_CPU_BATCH_SIZE="48", XRAYSYNTH_SHARD_SIZE="250")
    total = sum(SPEC.values())
    ds = wait_status(api, researcher, ds_id, "ready", timeout=300, workers=[worker])
    assert ds["progress"] == {"done": total, "total": total}

    rows = list(csv.DictReader(io.StringIO(release_object(ds_id, "manifest.csv").decode())))
    assert [int(r["index"]) for r in rows] == list(range(total))
    expected = [c for c in CONDITIONS if c in SPEC for _ in range(SPEC[c])]  # model order, contiguous blocks
    assert [r["condition"] for r in rows] == expected

    preview = np.asarray(Image.open(io.BytesIO(release_object(ds_id, "preview.png"))).convert("L"))
    per_band = min(PREVIEW_COLUMNS, min(SPEC.values()))
    assert _band_tiles(preview, len(SPEC)) == [per_band] * len(SPEC)
