"""A model version whose bundle carries a re-identification verifier: the worker's produce loop runs
both checks on every image, counts rejections per check, keeps the closest verifier pairs and the
DCR counts in the private evidence fragment, and writes none of it into the released shard."""

from __future__ import annotations

import io
import json
import tarfile
import uuid

import numpy as np
import pytest

from models.bundle import load_bundle
from models.privacy import build_privacy_index, calibrate
from models.privacy.reid import bundle_verifier, fit_linear
from service.layout import image_blocks
from tests.privacy.test_reid import known_patients
from tests.workers.conftest import PLANT_SEED
from workers.device import prepare_for_inference
from workers.evidence import _checks, _reid_pairs
from workers.model_store import LoadedModel
from workers.produce import CLOSEST_K, ShardJob, produce_shard


@pytest.fixture(scope="module")
def loaded_with_verifier(toy_model) -> LoadedModel:
    bundle = prepare_for_inference(load_bundle(toy_model.bundle_bytes))
    ts = toy_model.trainset
    # Fitted on other patients: fitted on the toy set, the verifier would learn to ignore exactly the
    # seed-to-seed variation of the untrained generator that also made the toy "patients".
    other = known_patients()[0]
    bundle.verifier = bundle_verifier(fit_linear(other.images, other.patient_ids))
    index = build_privacy_index(bundle, ts, split=None)
    return LoadedModel(uuid.uuid4(), "toy-dcgan", "v-test", bundle, index, calibrate(index, ts), "cpu")


def test_every_image_is_checked_both_ways_and_the_verifier_evidence_stays_private(loaded_with_verifier):
    loaded = loaded_with_verifier
    assert loaded.privacy_index.has_reid and loaded.calibration.reid_threshold is not None
    spec = {"Effusion": 10, "Pneumonia": 6}
    blocks = image_blocks(spec, loaded.bundle.conditions)
    job = ShardJob(uuid.uuid4(), 0, 0, 16, PLANT_SEED + 1, blocks, "png", True, 16)
    out = io.BytesIO()
    result = produce_shard(job, loaded, out, pool=None, batch_size=8, max_attempts=8, uid_root="2.25.1")
    ev = result.evidence
    assert ev.n_rejected == ev.n_rejected_copy + ev.n_rejected_reid
    assert ev.dcr_n == 0  # the toy set has no held-out images: no DCR share rather than a made-up one
    with np.load(io.BytesIO(ev.to_npz()), allow_pickle=False) as z:
        frag = {k: z[k] for k in z.files}
    k = min(CLOSEST_K, 16)
    assert len(frag["reid_distance"]) == k and np.all(np.diff(frag["reid_distance"]) >= 0)
    assert np.all(frag["reid_distance"] >= loaded.calibration.reid_threshold)  # released images passed the check
    assert frag["reid_pixels"].shape == (k, 128, 128) and (frag["reid_row"] >= 0).all()

    # The admin evidence: the closest verifier pairs with their place among new patients' distances.
    table = {"condition": np.array([r[3] for r in result.rows])}
    pairs, order, rows = _reid_pairs(loaded.calibration, loaded.privacy_index, table, frag)
    assert [p["index"] for p in pairs] == frag["reid_index"][order].tolist() and len(pairs) == min(8, k)
    assert all(p["distance"] >= p["threshold"] and 0.0 <= p["new_patients_closer"] <= 1.0 for p in pairs)
    assert all(p["nearest_image_id"] in set(loaded.privacy_index.image_ids) for p in pairs)
    checks = _checks(loaded.calibration, frag, pairs)
    assert checks["reidentification"]["n_rejected"] == ev.n_rejected_reid and checks["copy"]["n_rejected"] == ev.n_rejected_copy
    assert "share_closer_to_training" not in checks["dcr"]

    # The released shard: images, heatmaps and per-image JSON only - no verifier figure, no real neighbour.
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    assert {name.split(".", 1)[1] for name in members} == {"png", "heatmap.png", "json"}
    for name, data in members.items():
        if name.endswith(".json"):
            text = json.dumps(json.loads(data)).lower()
            assert "reid" not in text and "patient" not in text and "identification" not in text
