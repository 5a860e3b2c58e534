"""The report script runs end to end on a tiny training set and writes figures only."""

from __future__ import annotations

import json

import pytest
from conftest import make_trainset

from models.bundle import save_bundle
from models.privacy import report
from models.trainset import write_trainset


def test_report_end_to_end(bundle, tmp_path):
    ts = make_trainset(n_patients=45, per_patient=2, seed=9, splits=("train", "val", "test"))
    meta = [
        {"image_id": i, "patient_id": p, "split": s, "source": src, "license": "CC BY 4.0", "view": "PA"}
        for i, p, s, src in zip(ts.image_ids, ts.patient_ids, ts.splits, ts.sources)
    ]
    write_trainset(tmp_path / "trainset", ts.images, ts.labels, meta, ts.conditions)
    save_bundle(tmp_path / "bundle.pt", generator=bundle.generator, classifier=bundle.classifier,
                discriminator=bundle.discriminator, conditions=bundle.conditions, config=bundle.config, card=bundle.card)
    out = tmp_path / "out"
    report.main(["--bundle", str(tmp_path / "bundle.pt"), "--trainset", str(tmp_path / "trainset"), "--out", str(out),
                 "--n-generated", "48", "--mia-n", "20", "--mia-generated", "40", "--threads", "2"])

    (path,) = out.glob("privacy_report-*.json")
    rep = json.loads(path.read_text())
    assert rep["generated"]["n_images"] == 48 and 0.0 <= rep["generated"]["fraction_filtered"] <= 1.0
    assert sum(rep["evidence_histogram"]["dataset_counts"]) == 48 - rep["generated"]["n_failed"]
    assert sum(rep["generated"]["attempts_histogram"].values()) == 48 - rep["generated"]["n_failed"]
    assert 0.0 <= rep["calibration"]["same_patient_catch_rate"] <= 1.0
    assert 0.0 <= rep["heldout"]["flag_rate"] <= 1.0
    assert set(rep["membership_inference"]["attacks"]) >= {"distance", "discriminator"}
    assert (out / "privacy_index.npz").exists() and (out / "calibration.json").exists()
    # Figures only: no patient or image ids of real training images in the report.
    text = path.read_text()
    assert not any(pid in text for pid in ts.patient_ids) and not any(iid in text for iid in ts.image_ids)


def test_writing_the_privacy_section_keeps_the_verifiers_figures_and_rechecks_the_generators_images(bundle, tmp_path):
    from models.bundle import load_bundle
    from models.privacy.reid import NCCSpace, bundle_verifier

    ts = make_trainset(n_patients=45, per_patient=2, seed=9, splits=("train", "val", "test"))
    meta = [{"image_id": i, "patient_id": p, "split": s, "source": src, "license": "CC BY 4.0", "view": "PA"}
            for i, p, s, src in zip(ts.image_ids, ts.patient_ids, ts.splits, ts.sources)]
    write_trainset(tmp_path / "trainset", ts.images, ts.labels, meta, ts.conditions)
    heldout = {"source_matched_auc": 0.61, "loo_catch_rate_crossfit": 0.001}
    card = {**bundle.card, "privacy": {"reidentification": {
        "verifier_heldout": heldout, "targets": {"generated_flagged": 0.02},
        "filter_on_generated": {"not_measured": "inherited"}, "targets_met": {"generated_flagged": None}}}}
    path = save_bundle(tmp_path / "bundle.pt", generator=bundle.generator, classifier=bundle.classifier,
                       discriminator=bundle.discriminator, conditions=bundle.conditions, config=bundle.config,
                       card=card, verifier=bundle_verifier(NCCSpace()))
    (tmp_path / "card.json").write_text("{}")
    report.main(["--bundle", str(path), "--trainset", str(tmp_path / "trainset"), "--out", str(tmp_path / "out"),
                 "--n-generated", "32", "--mia-n", "20", "--mia-generated", "40", "--threads", "2", "--write-card"])

    written = load_bundle(path)
    privacy = written.card["privacy"]
    assert privacy["filter_on_generated"]["n_images"] == 32 and "threshold" in privacy["calibration"]
    reid = privacy["reidentification"]
    assert reid["verifier_heldout"] == heldout  # measured on real patients: not this report's to change
    gen = reid["filter_on_generated"]
    assert gen["n_images"] == 32 and 0.0 <= gen["flagged_either"] <= 1.0
    assert reid["targets_met"]["generated_flagged"] == (gen["flagged_either"] <= 0.02)
    control = gen["dcr_control"]  # the DCR share beside what new patients' own images score
    assert control["repeats"] == 5 and len(control["per_repeat"]["real_new_patients"]) == 5
    assert 0.0 <= control["real_new_patients"] <= 1.0 and 0.0 <= control["synthetic"] <= 1.0
    assert control["difference"] == pytest.approx(control["synthetic"] - control["real_new_patients"])
    assert written.verifier is not None and written.verifier["kind"] == "ncc"
    assert json.loads((tmp_path / "card.json").read_text())["privacy"]["reidentification"]["filter_on_generated"] == gen


@pytest.mark.parametrize("difference, says_so", [(0.05, True), (0.0, False)])
def test_the_card_says_in_words_when_the_generator_sits_closer_to_training_patients(bundle, tmp_path, difference,
                                                                                     says_so):
    from models.bundle import load_bundle

    old = report.DCR_CAVEAT_PREFIX + " an earlier measurement"
    path = save_bundle(tmp_path / "bundle.pt", generator=bundle.generator, classifier=bundle.classifier,
                       discriminator=bundle.discriminator, conditions=bundle.conditions, config=bundle.config,
                       card={**bundle.card, "caveats": ["kept", old],
                             "privacy": {"reidentification": {"targets": {"generated_flagged": 0.02}}}})
    control = {"synthetic": 0.58 + difference, "real_new_patients": 0.58, "difference": difference,
               "difference_sd": 0.03, "repeats": 5}
    rep = {"generated": {"n_images": 10}, "calibration": {}, "heldout": {}, "membership_inference": {},
           "bundle": {"sha256": "0" * 64}, "device": "cpu",
           "reidentification_on_generated": {"flagged_either": 0.01, "dcr_control": control}}
    report.write_card_section(path, rep)
    caveats = load_bundle(path).card["caveats"]
    assert "kept" in caveats and old not in caveats
    dcr = [c for c in caveats if c.startswith(report.DCR_CAVEAT_PREFIX)]
    assert (dcr == []) != says_so
    if says_so:
        assert f"{0.58 + difference:.1%}" in dcr[0] and "+5.0 ± 3.0 points" in dcr[0]
