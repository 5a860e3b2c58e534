"""The CNN verifier (kind "cnn"): it travels through payload, bundle and privacy index unchanged,
and a tiny training run on known patients separates a new patient's images from strangers'."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from models.bundle import untrained_bundle
from models.privacy import PrivacyIndex, build_privacy_index
from models.privacy.reid import bundle_verifier, space_from_payload
from models.privacy.reid_cnn import CNNSpace, ReidNet
from models.privacy.reid_eval import evaluate_space
from models.privacy.reid_train import fit_cnn, split_patients
from tests.privacy.conftest import make_trainset


@pytest.fixture(scope="module")
def patients():
    """60 known patients x 4 images (shifts, brightness, noise); 36 train, 12 val, 12 test."""
    return (make_trainset(60, 4, seed=3, splits=("train", "train", "train", "val", "test")),)


@pytest.fixture(scope="module")
def trained(patients):
    ts = patients[0]
    tr = ts.splits == "train"
    return fit_cnn(ts.images[tr], ts.patient_ids[tr], ts.sources[tr], seed=0, arch="small", size=32, width=8,
                   dim=32, epochs=6, patients_per_batch=12, lr=3e-3, log=lambda *_: None)


def test_a_cnn_space_round_trips_through_payload_bundle_and_index(patients):
    ts = patients[0]
    torch.manual_seed(0)
    space = CNNSpace(ReidNet("small", width=8, dim=16), size=32, info={"loss": "supcon"})
    x = ts.images[:6]
    p = bundle_verifier(space)
    assert p["kind"] == "cnn" and all(v.dtype == torch.float16 for v in p["state"].values() if v.is_floating_point())
    buf = io.BytesIO()
    torch.save(p, buf)
    back = space_from_payload(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    e, e2 = space.index(x), back.index(x)
    assert e.shape == (6, 16) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(e2, e, atol=2e-2)  # fp16 weights
    assert back.query(x).shape == (1, 6, 16)
    # brightness/contrast invariant: each image is standardised first
    brighter = np.clip(x.astype(np.float32) * 0.8 + 20, 0, 255).round().astype(np.uint8)
    assert np.min(np.sum(back.index(brighter) * e2, axis=1)) > 0.98

    b = untrained_bundle(seed=0)
    b.verifier = p
    index = build_privacy_index(b, ts)
    again = PrivacyIndex.load(index.to_bytes())
    assert again.has_reid and again.reid_payload["kind"] == "cnn" and again.meta["reid_kind"] == "cnn"
    np.testing.assert_allclose(again.nearest_reid(x)[0], index.nearest_reid(x)[0], atol=1e-5)
    assert (index.nearest_reid(x)[0] < 1e-2).all()  # training images find themselves


def test_early_stopping_holds_back_whole_patients_the_same_for_every_seed(patients):
    ts = patients[0]
    tr = ts.splits == "train"
    pid = ts.patient_ids[tr]
    fit, es = split_patients(pid)
    assert set(pid[fit]).isdisjoint(pid[es]) and len(es) > 0
    assert np.array_equal(split_patients(pid)[1], es)


def test_a_tiny_trained_cnn_tells_new_patients_from_strangers_better_than_chance(patients, trained):
    ev = evaluate_space(trained, patients[0])
    torch.manual_seed(0)
    untrained = evaluate_space(CNNSpace(ReidNet("small", width=8, dim=32), size=32), patients[0])
    assert ev["pairs"]["n_positive_patients"] == 24  # val + test only
    auc = ev["pairs"]["source_matched"]["auc"]
    assert auc > 0.9 and auc > untrained["pairs"]["source_matched"]["auc"] + 0.1
    assert ev["leave_one_out"]["rank1"] > 0.8
    assert trained.info["n_fit_patients"] + trained.info["n_early_stop_patients"] == 36
    assert trained.info["early_stop_auc"] > 0.5


def test_cnn_training_is_deterministic_given_the_seed(patients):
    ts = patients[0]
    tr = ts.splits == "train"
    kw = dict(seed=1, arch="small", size=32, width=4, dim=8, epochs=1, patients_per_batch=12, log=lambda *_: None)
    a = fit_cnn(ts.images[tr], ts.patient_ids[tr], ts.sources[tr], **kw)
    b = fit_cnn(ts.images[tr], ts.patient_ids[tr], ts.sources[tr], **kw)
    np.testing.assert_array_equal(a.index(ts.images[:4]), b.index(ts.images[:4]))
