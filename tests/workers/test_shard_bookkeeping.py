"""Property test of a shard's bookkeeping over random specs, batch sizes and shard sizes.

The real produce loop runs on the toy model (real generator, Grad-CAM and memorisation filter, no
database): whatever the spec, the rows come out in image order with each condition a contiguous block
in the model's order, every image is in the tar under its hash, the preview holds exactly the first
images of every condition block, and the evidence fragment round-trips with consistent shapes.
The oracle below spells the rules out independently of the code under test."""

from __future__ import annotations

import hashlib
import io
import tarfile
import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.bundle import load_bundle
from models.conditions import CONDITIONS
from models.privacy import build_privacy_index, calibrate
from service.layout import image_blocks, key_width
from tests.workers.conftest import PLANT_SEED
from workers.device import prepare_for_inference
from workers.model_store import LoadedModel
from workers.plan import shard_ranges
from workers.preview import render_preview
from workers.produce import CLOSEST_K, PREVIEW_PER_CONDITION, ShardJob, produce_shard


@pytest.fixture(scope="module")
def loaded(toy_model) -> LoadedModel:
    bundle = prepare_for_inference(load_bundle(toy_model.bundle_bytes))
    index = build_privacy_index(bundle, toy_model.trainset, split=None)
    return LoadedModel(uuid.uuid4(), "toy-dcgan", "prop", bundle, index, calibrate(index, toy_model.trainset), "cpu")


specs = st.dictionaries(st.sampled_from(CONDITIONS), st.integers(1, 12), min_size=1, max_size=len(CONDITIONS))


def _oracle(spec: dict[str, int]) -> tuple[list[str], list[int]]:
    """Image order and preview set, written from the rule rather than from the code."""
    conditions, preview = [], []
    for c in CONDITIONS:  # the model's order
        if c in spec:
            start = len(conditions)
            conditions += [c] * spec[c]
            preview += list(range(start, start + min(spec[c], PREVIEW_PER_CONDITION)))
    return conditions, preview


def _tar_members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(spec=specs, batch_size=st.integers(1, 17), shard_size=st.integers(1, 70),
       seed=st.integers(0, 10_000).filter(lambda s: s != PLANT_SEED))
def test_shard_bookkeeping_holds_for_any_spec_batch_and_shard_size(loaded, spec, batch_size, shard_size, seed):
    blocks = image_blocks(spec, loaded.bundle.conditions)
    total = sum(spec.values())
    want_conditions, want_preview = _oracle(spec)
    dataset_id = uuid.uuid4()
    fragments = []
    for shard_index, (start, stop) in enumerate(shard_ranges(total, shard_size)):
        job = ShardJob(dataset_id, shard_index, start, stop, seed, blocks, "png", True, total)
        out = io.BytesIO()
        result = produce_shard(job, loaded, out, pool=None, batch_size=batch_size, max_attempts=8,
                               uid_root="2.25.1")
        n = stop - start

        # provenance rows: image order, condition blocks, one row per image with the tar's hash
        assert [r[1] for r in result.rows] == list(range(start, stop))
        assert [r[3] for r in result.rows] == want_conditions[start:stop]
        assert all(r[2] == shard_index and r[4] == seed for r in result.rows)
        data = out.getvalue()
        assert hashlib.sha256(data).hexdigest() == result.sha256 and len(data) == result.size
        members = _tar_members(data)
        assert list(members) == sorted(members)
        width = key_width(total)
        for r in result.rows:
            image = members[f"{r[1]:0{width}d}.png"]
            assert hashlib.sha256(image).hexdigest() == r[6]
        assert sum(name.endswith(".heatmap.png") for name in members) == n

        # evidence: counts, the closest images, and the preview tiles of this shard
        ev = result.evidence
        assert ev.n_generated == n + ev.n_rejected
        with np.load(io.BytesIO(ev.to_npz()), allow_pickle=False) as z:
            frag = {k: z[k] for k in z.files}
        in_shard = [i for i in want_preview if start <= i < stop]
        assert frag["preview_index"].tolist() == in_shard
        assert frag["preview_pixels"].shape == (len(in_shard), 128, 128)
        assert frag["preview_heatmaps"].shape == (len(in_shard), 32, 32)
        k = len(frag["closest_index"])
        assert k == min(CLOSEST_K, n)
        assert np.all(np.diff(frag["closest_score"]) >= 0)
        assert all(start <= i < stop for i in frag["closest_index"].tolist())
        assert frag["closest_pixels"].shape == (k, 128, 128)
        assert len(frag["rejected_scores"]) == ev.n_rejected
        fragments.append(frag)

    # across shards: the preview holds the first images of every condition, and renders
    merged = {key: np.concatenate([f[key] for f in fragments]) for key in
              ("preview_index", "preview_pixels", "preview_heatmaps")}
    assert merged["preview_index"].tolist() == want_preview
    assert render_preview(blocks, merged)[:8] == b"\x89PNG\r\n\x1a\n"
