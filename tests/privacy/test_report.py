"""The report script runs end to end on a tiny training set and writes figures only."""

from __future__ import annotations

import json

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
