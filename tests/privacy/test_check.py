"""`privacy check` on a folder: a planted copy and a training patient's other image are both reported,
each by its own check, with the training image and patient they point at; a stranger is not."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from cli import app
from models.bundle import bundle_bytes, untrained_bundle
from models.privacy.reid import bundle_verifier, fit_linear
from models.trainset import write_trainset
from tests.privacy.conftest import smooth_base
from tests.privacy.test_reid import known_patients, patient_image


def _trainset_and_bundle(tmp_path):
    ts, bases, nuisance = known_patients()
    meta = [{"image_id": i, "patient_id": p, "split": s, "source": "srcA", "license": "CC BY 4.0", "view": "PA"}
            for i, p, s in zip(ts.image_ids, ts.patient_ids, ts.splits)]
    write_trainset(tmp_path / "trainset", ts.images, ts.labels, meta, ts.conditions)
    tr = ts.splits == "train"
    b = untrained_bundle(seed=0)
    (tmp_path / "bundle.pt").write_bytes(bundle_bytes(
        generator=b.generator, classifier=b.classifier, discriminator=b.discriminator, conditions=b.conditions,
        config=b.config, card=b.card, verifier=bundle_verifier(fit_linear(ts.images[tr], ts.patient_ids[tr]))))
    return ts, bases, nuisance


def _check(tmp_path, folder):
    out = tmp_path / "report.json"
    res = CliRunner().invoke(app, ["privacy", "check", str(folder), "--trainset", str(tmp_path / "trainset"),
                                   "--bundle", str(tmp_path / "bundle.pt"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text())


def test_privacy_check_reports_a_planted_copy_and_a_same_patient_image(tmp_path):
    ts, bases, nuisance = _trainset_and_bundle(tmp_path)
    tr = ts.splits == "train"
    folder = tmp_path / "images"
    folder.mkdir()
    copied = int(np.flatnonzero(tr)[5])  # a training image, saved as a file
    Image.fromarray(ts.images[copied]).save(folder / "a_copy.png")
    Image.fromarray(patient_image(np.random.default_rng(77), bases[0], nuisance)).save(folder / "b_same_patient.png")
    Image.fromarray(patient_image(np.random.default_rng(78), smooth_base(np.random.default_rng(900), 1)[0], nuisance)).save(
        folder / "c_stranger.png")
    (folder / "notes.txt").write_text("not an image")

    report = _check(tmp_path, folder)
    rows = {r["file"]: r for r in report["images"]}
    assert set(rows) == {"a_copy.png", "b_same_patient.png", "c_stranger.png"}
    assert rows["a_copy.png"]["check"] == "copy" and rows["a_copy.png"]["image_id"] == ts.image_ids[copied]
    assert rows["a_copy.png"]["patient_id"] == ts.patient_ids[copied]
    same = rows["b_same_patient.png"]
    assert same["flagged"] and same["check"] == "reidentification" and same["patient_id"] == "fx:0"
    assert same["scores"]["reidentification_distance"] < same["scores"]["reidentification_threshold"]
    assert same["scores"]["copy_score"] >= same["scores"]["copy_threshold"]
    assert rows["c_stranger.png"] == {**rows["c_stranger.png"], "flagged": False, "check": None}
    s = report["summary"]
    assert (s["n_images"], s["n_flagged_copy"], s["n_flagged_reidentification"]) == (3, 1, 1)


def test_privacy_check_refuses_a_folder_that_is_not_a_training_set(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "notaset").mkdir()
    res = CliRunner().invoke(app, ["privacy", "check", str(tmp_path / "images"), "--trainset", str(tmp_path / "notaset"),
                                           "--out", str(tmp_path / "r.json")])
    assert res.exit_code != 0 and "trainset.json" in res.output
    assert not (tmp_path / "r.json").exists()


def test_privacy_check_reads_dicom_files_named_by_uid_and_lists_every_file_it_could_not_check(tmp_path):
    from tests.models.dicom_fixtures import make_dicom

    ts, _, _ = _trainset_and_bundle(tmp_path)
    copied = int(np.flatnonzero(ts.splits == "train")[3])
    folder = tmp_path / "export"
    # PACS exports name files by SOP Instance UID: the "suffix" is the UID's last number
    make_dicom(folder / "study1" / "1.2.826.0.1.3680043.8.498.1234", ts.images[copied].astype(np.uint16), bits_stored=8)
    Image.fromarray(ts.images[copied]).save(folder / "scan.tif")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / ".thumbs").mkdir()
    Image.fromarray(ts.images[copied]).save(folder / ".thumbs" / "t.png")

    report = _check(tmp_path, folder)
    rows = {r["file"]: r for r in report["images"]}
    assert set(rows) == {"study1/1.2.826.0.1.3680043.8.498.1234"}
    assert rows["study1/1.2.826.0.1.3680043.8.498.1234"]["check"] == "copy"
    assert rows["study1/1.2.826.0.1.3680043.8.498.1234"]["image_id"] == ts.image_ids[copied]
    assert report["summary"]["skipped"] == [{"file": "scan.tif", "reason": "unsupported file type .tif"}]


def test_privacy_check_refuses_an_out_path_that_is_a_folder_before_doing_the_work(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "out").mkdir()
    _trainset_and_bundle(tmp_path)
    res = CliRunner().invoke(app, ["privacy", "check", str(tmp_path / "images"), "--trainset", str(tmp_path / "trainset"),
                                   "--bundle", str(tmp_path / "bundle.pt"), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "Invalid value for '--out'" in res.output
