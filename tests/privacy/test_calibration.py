"""Calibration: the threshold separates repeat images of one patient from other patients."""

from __future__ import annotations

import json

import numpy as np
from conftest import make_trainset

from models.privacy import MIN_THRESHOLD, Calibration, build_privacy_index, calibrate
from models.privacy.calibration import _threshold_for_flag_rate


def test_threshold_separates_same_from_different_patients(calibration, index):
    # Fixture patients: base image + noise, <= 2 px shift, brightness change per image.
    assert calibration.same_patient_catch_rate >= 0.95
    assert calibration.different_patient_flag_rate <= 0.01
    assert calibration.targets_met
    assert calibration.n_same_patient_images == len(index)  # every fixture patient has 4 images
    assert calibration.n_same_patient_pairs == 40 * 6
    assert calibration.pairs["same_patient_pair_catch_rate"] >= 0.95
    assert calibration.pairs["different_patient_pair_flag_rate"] <= 0.01
    assert sum(calibration.same_patient_counts) == calibration.n_same_patient_images
    assert sum(calibration.different_patient_counts) == calibration.n_different_patient_images
    assert len(calibration.bin_edges) == len(calibration.same_patient_counts) + 1
    assert set(calibration.per_source) == {"srcA", "srcB"}


def test_perturbed_copies_always_flagged(calibration):
    check = calibration.copy_check
    assert check["exact"]["max_score"] == 0.0
    for name in ("exact", "brightness_contrast", "shift_1px", "shift_1px_diagonal_brighter", "shift_2px"):
        assert check[name]["flagged_rate"] == 1.0, name
    assert calibration.flagged([0.0]).all() and calibration.threshold >= MIN_THRESHOLD


def test_json_round_trip(calibration):
    d = json.loads(json.dumps(calibration.to_dict()))
    back = Calibration.from_dict(d)
    assert back == calibration
    assert "median distance" in back.method and "1%" in back.rule


def test_unreachable_targets_follow_the_stated_rule(bundle):
    """Patients whose repeat images are unrelated (like real follow-ups) can't be told from strangers:
    the threshold then keeps the <= 1 % bound and reports the low catch rate as measured."""
    ts = make_trainset(n_patients=30, per_patient=3, seed=5)
    rng = np.random.default_rng(0)
    ts.images = ts.images[rng.permutation(len(ts.images))]  # scramble: patient ids no longer match
    cal = calibrate(build_privacy_index(bundle, ts), ts)
    assert cal.different_patient_flag_rate <= 0.01
    assert cal.same_patient_catch_rate < 0.95 and not cal.targets_met
    assert "vs target 95%" in cal.rule


def test_threshold_rule_on_known_scores():
    diff = np.arange(1, 201, dtype=np.float64) / 100  # 0.01 .. 2.00
    t = _threshold_for_flag_rate(diff, 0.01)
    assert t == 0.03 and np.mean(diff < t) == 0.01  # 2 of 200 flagged
    assert np.mean(diff < np.nextafter(t, 9)) > 0.01  # any larger threshold breaks the bound
