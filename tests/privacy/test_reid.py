"""The re-identification check: a verifier fitted on known patients, its own calibrated threshold,
and the filter replacing a training patient's *other* image (not a copy) deterministically."""

from __future__ import annotations

import numpy as np
import pytest

from models.bundle import untrained_bundle
from models.conditions import CONDITIONS
from models.privacy import (
    PrivacyIndex,
    build_privacy_index,
    calibrate,
    filter_and_replace,
    memorisation_filter,
)
from models.privacy.features import classifier_embeddings
from models.privacy.reid import NCCSpace, bundle_verifier, fit_linear
from models.privacy.reid_eval import evaluate_space
from models.trainset import TrainSet
from tests.privacy.conftest import smooth_base

N_NUISANCE = 6


def nuisance_patterns() -> np.ndarray:
    return smooth_base(np.random.default_rng(99), N_NUISANCE) - 128.0


def patient_image(rng, base, nuisance) -> np.ndarray:
    """One radiograph of a patient: their anatomy (base, weak) under strong visit-to-visit changes
    shared by everyone (nuisance patterns with random weights) - unlike a copy, pixel-wise it
    correlates little with the patient's other images."""
    w = rng.normal(0, 1.6, N_NUISANCE)
    img = 128.0 + 0.35 * (base - 128.0) + np.tensordot(w, nuisance, 1) / np.sqrt(N_NUISANCE) + rng.normal(0, 2, base.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def known_patients(n_patients: int = 60, per_patient: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    bases, nuisance = smooth_base(rng, n_patients), nuisance_patterns()
    images = np.stack([patient_image(rng, b, nuisance) for b in bases for _ in range(per_patient)])
    n = len(images)
    splits = np.repeat(np.array(["train", "train", "train", "val", "test"])[np.arange(n_patients) % 5], per_patient)
    labels = np.zeros((n, len(CONDITIONS)), np.uint8)
    labels[:, 0] = 1
    ts = TrainSet(images=images, labels=labels, patient_ids=np.repeat([f"fx:{p}" for p in range(n_patients)], per_patient),
                  splits=splits, sources=np.full(n, "srcA"), licenses=np.full(n, "CC BY 4.0"),
                  conditions=list(CONDITIONS), fingerprint=f"reid-fixture-{seed}",
                  image_ids=np.array([f"img{i:05d}" for i in range(n)]), views=np.full(n, "PA"))
    return ts, bases, nuisance


@pytest.fixture(scope="module")
def patients():
    return known_patients()


@pytest.fixture(scope="module")
def verifier(patients):
    ts = patients[0]
    tr = ts.splits == "train"
    return fit_linear(ts.images[tr], ts.patient_ids[tr])


@pytest.fixture(scope="module")
def reid_setup(patients, verifier):
    ts = patients[0]
    b = untrained_bundle(seed=0)
    b.verifier = bundle_verifier(verifier)
    index = build_privacy_index(b, ts)
    return b, index, calibrate(index, ts)


def test_the_verifier_tells_a_new_patients_images_from_strangers_where_correlation_cannot(patients, verifier):
    ts = patients[0]
    learnt = evaluate_space(verifier, ts)
    ncc = evaluate_space(NCCSpace(angles=(0.0,)), ts)
    # Only val/test patients are scored: the verifier never saw them.
    assert learnt["pairs"]["n_positive_patients"] == 24
    assert learnt["pairs"]["source_matched"]["auc"] > 0.95
    assert learnt["leave_one_out"]["rank1"] > 0.8
    assert ncc["pairs"]["source_matched"]["auc"] < learnt["pairs"]["source_matched"]["auc"] - 0.1


def test_reid_threshold_flags_at_most_one_percent_of_new_patients_and_keeps_the_copy_threshold(patients, reid_setup):
    ts = patients[0]
    _, index, cal = reid_setup
    r = cal.reidentification
    assert r["kind"] == "linear" and r["n_new_patient_images"] == int(np.isin(ts.splits, ["val", "test"]).sum())
    assert r["new_patient_flag_rate"] <= 0.01 and r["threshold"] > 0
    plain = calibrate(build_privacy_index(untrained_bundle(seed=0), ts), ts)
    assert plain.reidentification == {}
    assert cal.threshold == plain.threshold and cal.copy_check == plain.copy_check


def test_a_training_patients_image_not_in_the_index_is_replaced_as_reidentification_deterministically(patients, reid_setup):
    ts, bases, nuisance = patients
    b, index, cal = reid_setup
    patient = 0  # a train-split patient: in the index with other images
    assert ts.splits[ts.patient_ids == "fx:0"][0] == "train"
    other = patient_image(np.random.default_rng(1234), bases[patient], nuisance)[None]
    assert not any(np.array_equal(other[0], x) for x in ts.images)
    res = memorisation_filter(index, cal, other, classifier_embeddings(b.classifier, other))
    assert list(res.check) == ["reidentification"]  # not a copy: the copy check lets it through
    assert index.patient_ids[res.reid_index[0]] == "fx:0"

    rng_new = np.random.default_rng(7)
    strangers = {k: patient_image(rng_new, smooth_base(np.random.default_rng(500 + k), 1)[0], nuisance) for k in range(8)}

    def generate_fn(indices, attempts):
        px = np.stack([other[0] if (i == 3 and a == 0) else strangers[(int(i) + int(a)) % 8] for i, a in zip(indices, attempts)])
        return px, classifier_embeddings(b.classifier, px), None

    first = filter_and_replace(generate_fn, index, cal, np.arange(6))
    second = filter_and_replace(generate_fn, index, cal, np.arange(6))
    assert first.n_rejected_reid == 1 and first.n_rejected_copy == 0 and first.n_rejected == 1
    assert first.attempts.tolist() == [0, 0, 0, 1, 0, 0]
    assert (first.reid_distance >= cal.reid_threshold).all()
    np.testing.assert_array_equal(first.pixels, second.pixels)
    np.testing.assert_array_equal(first.pixels[3], strangers[4])


def test_the_index_keeps_its_verifier_through_save_and_load(reid_setup, patients):
    _, index, _ = reid_setup
    back = PrivacyIndex.load(index.to_bytes())
    assert back.has_reid and back.reid_payload["kind"] == "linear"
    q = patients[0].images[:5]
    np.testing.assert_allclose(back.nearest_reid(q)[0], index.nearest_reid(q)[0], atol=2e-3)
    assert back.dcr_share(q)["n_heldout_images"] == len(index.holdout_reid)


def test_a_bundle_keeps_its_verifier_when_its_card_is_rewritten(verifier):
    from models.bundle import bundle_bytes, load_bundle
    from models.registry import with_card

    b = untrained_bundle(seed=0)
    data = bundle_bytes(generator=b.generator, classifier=b.classifier, discriminator=b.discriminator,
                        conditions=b.conditions, config=b.config, card=b.card, verifier=bundle_verifier(verifier))
    again = load_bundle(with_card(data, {"name": "rewritten"})[0])
    assert again.card == {"name": "rewritten"} and again.verifier["kind"] == "linear"
    assert again.verifier["projection"].dtype.is_floating_point and again.verifier["projection"].itemsize == 2  # fp16
    np.testing.assert_allclose(again.verifier["projection"].float().numpy(), verifier.projection, atol=1e-2, rtol=1e-2)


def test_the_dcr_control_scores_a_training_patients_new_images_above_new_patients_images(patients, reid_setup):
    from models.privacy.dcr import dcr_with_control

    ts, bases, nuisance = patients
    _, index, _ = reid_setup
    rng = np.random.default_rng(5)
    trained_on = [b for p, b in enumerate(bases) if p % 5 < 3]  # the fixture's train patients
    memorised = np.stack([patient_image(rng, b, nuisance) for b in trained_on[:30]])  # new views of them
    strangers = np.stack([patient_image(rng, b, nuisance) for b in smooth_base(np.random.default_rng(77), 30)])
    mem, new = dcr_with_control(index, ts, memorised), dcr_with_control(index, ts, strangers)
    assert mem["real_new_patients"] == new["real_new_patients"]  # the same control for both
    assert mem["difference"] > 0.2 and mem["synthetic"] >= 0.7
    assert abs(new["difference"]) < 0.15, new
    assert mem["n_synthetic"] == 30 and mem["n_heldout_images"] == int(np.isin(ts.splits, ["val", "test"]).sum())


def test_by_source_shows_the_source_where_the_verifier_fails_beside_the_pooled_figure():
    from models.privacy.reid_eval import by_source

    easy, _, _ = known_patients(n_patients=40, seed=3)
    hard, _, _ = known_patients(n_patients=60, seed=4)
    # The hard source's "patients" are images regrouped at random: no identity to find, as for a
    # patient whose films share nothing recognisable.
    shuffled = np.random.default_rng(0).permutation(len(hard.images))
    ts = TrainSet(images=np.concatenate([easy.images, hard.images[shuffled]]), labels=np.concatenate([easy.labels, hard.labels]),
                  patient_ids=np.concatenate([np.char.add("easy:", easy.patient_ids), np.char.add("hard:", hard.patient_ids)]),
                  splits=np.concatenate([easy.splits, hard.splits]),
                  sources=np.concatenate([np.full(len(easy.images), "easy"), np.full(len(hard.images), "hard")]),
                  licenses=np.concatenate([easy.licenses, hard.licenses]), conditions=easy.conditions,
                  fingerprint="reid-two-sources", image_ids=np.array([f"img{i:05d}" for i in range(len(easy.images) + len(hard.images))]),
                  views=np.full(len(easy.images) + len(hard.images), "PA"))
    tr = ts.splits == "train"
    rows = {r["subset"]: r for r in by_source(fit_linear(ts.images[tr], ts.patient_ids[tr]), ts)}
    assert list(rows) == ["all held-out patients", "easy only", "hard only", "all but hard"]
    pooled, found, lost = rows["all held-out patients"], rows["easy only"], rows["hard only"]
    assert pooled["positive_pairs"] == found["positive_pairs"] + lost["positive_pairs"]
    assert rows["all but hard"]["positive_pairs"] == found["positive_pairs"]
    assert found["auc_source_matched"] > 0.9 > pooled["auc_source_matched"] and lost["auc_source_matched"] < 0.7
