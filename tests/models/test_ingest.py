"""Ingest: every DICOM case the issue lists, PNG + CSV, and per-file skip reasons."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from models.conditions import CONDITIONS
from models.ingest import IngestError, Skip, ingest, read_any
from models.trainset import load_trainset, patient_split

from .dicom_fixtures import chest_like, compress_jpeg2000, edit_dicom, make_dicom

pytest.importorskip("pydicom")


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "conditions", "patient_id", "split", "license"])
        w.writeheader()
        for r in rows:
            w.writerow({"split": "", "license": "", **r})


def _ingest_one(tmp_path, make, name="x.dcm"):
    """Ingest a single file and return (the 128 px image or None, skipped reasons)."""
    src = tmp_path / "src"
    make(src / name)
    _write_csv(tmp_path / "labels.csv", [{"path": name, "conditions": "Effusion", "patient_id": "p1", "split": "train"}])
    rep = ingest(src, tmp_path / "labels.csv", tmp_path / "out", progress=False)
    if rep.n_ingested:
        return load_trainset(tmp_path / "out").images[0], rep.skipped
    return None, rep.skipped


def _reference(tmp_path, pixels, **kw):
    img, _ = _ingest_one(tmp_path / "ref", lambda p: make_dicom(p, pixels, **kw))
    return img.astype(int)


def test_cr_and_dx_are_ingested(tmp_path):
    px = chest_like()
    for modality in ("CR", "DX"):
        img, skipped = _ingest_one(tmp_path / modality, lambda p: make_dicom(p, px, modality=modality))
        assert skipped == []
        assert img.shape == (128, 128) and img.dtype == np.uint8
        assert img.max() == 255 and img.min() == 0  # percentile-normalised
        assert img[:15, :15].mean() < 30  # the dark corner stays dark: orientation kept


def test_monochrome1_is_inverted(tmp_path):
    px = chest_like()
    mono2 = _reference(tmp_path / "m2", px)
    mono1, skipped = _ingest_one(tmp_path / "m1", lambda p: make_dicom(p, 4095 - px, photometric="MONOCHROME1"))
    assert skipped == []
    # same anatomy, same brightness convention (dense = bright) once inverted
    assert np.abs(mono1.astype(int) - mono2).mean() < 2.0


def test_rescale_then_window_is_applied(tmp_path):
    # stored 0..1000 along x; modality value = 2*stored - 1000 (-1000..1000);
    # window 500 +- 100 in modality units keeps only stored 700..800.
    ramp = np.tile(np.linspace(0, 1000, 200), (200, 1)).astype(np.uint16)
    img, skipped = _ingest_one(tmp_path, lambda p: make_dicom(p, ramp, rescale=(2.0, -1000.0), window=(500.0, 200.0)))
    assert skipped == []
    row = img[64].astype(int)
    # columns of the 128 px image map linearly onto stored values 0..1000
    x_mid = np.argmin(np.abs(row - 128))
    assert 0.70 * 127 <= x_mid <= 0.80 * 127, x_mid  # mid-grey where stored ~ 750, not ~ 500
    assert row[: int(0.6 * 128)].max() <= 5  # below the window: black
    assert row[int(0.9 * 128):].min() >= 250  # above the window: white


def test_bits_stored_ignores_high_bits(tmp_path):
    px = chest_like(bits=12)
    clean = _reference(tmp_path / "clean", px)
    garbage = (px | (np.random.default_rng(1).integers(0, 16, px.shape, dtype=np.uint16) << 12)).astype(np.uint16)
    img, skipped = _ingest_one(tmp_path / "dirty", lambda p: make_dicom(p, px, raw_pixel_bytes=garbage.tobytes()))
    assert skipped == []
    assert np.array_equal(img.astype(int), clean)


def test_jpeg2000_compressed(tmp_path):
    px = chest_like()
    plain = _reference(tmp_path / "plain", px)

    def make(path):
        tmp = make_dicom(path.with_name("raw.dcm"), px)
        compress_jpeg2000(tmp, path)
        tmp.unlink()

    img, skipped = _ingest_one(tmp_path / "j2k", make)
    assert skipped == []
    assert np.array_equal(img.astype(int), plain)  # lossless


@pytest.mark.parametrize("modality", ["CT", "MR", "US"])
def test_non_radiograph_modalities_are_skipped(tmp_path, modality):
    img, skipped = _ingest_one(tmp_path, lambda p: make_dicom(p, chest_like(), modality=modality))
    assert img is None
    assert "modality" in skipped[0]["reason"] and modality in skipped[0]["reason"]


def test_non_chest_body_part_is_skipped(tmp_path):
    img, skipped = _ingest_one(tmp_path, lambda p: make_dicom(p, chest_like(), body_part="KNEE"))
    assert img is None and "body part KNEE" in skipped[0]["reason"]


def test_unreadable_file_is_skipped(tmp_path):
    def make(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"this is not a DICOM file" * 10)

    img, skipped = _ingest_one(tmp_path, make)
    assert img is None and "unreadable" in skipped[0]["reason"]


def test_no_pixel_data_is_skipped(tmp_path):
    img, skipped = _ingest_one(tmp_path, lambda p: make_dicom(p, None))
    assert img is None and skipped[0]["reason"] == "no pixel data"


def test_read_any_reasons_are_specific(tmp_path):
    with pytest.raises(Skip, match="file not found"):
        read_any(tmp_path / "missing.dcm")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(Skip, match="unsupported file type"):
        read_any(tmp_path / "notes.txt")


def test_png_csv_mixed_run_writes_a_training_set(tmp_path):
    src = tmp_path / "src"
    (src / "png").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        arr = (chest_like(seed=i) >> 4).astype(np.uint8)
        Image.fromarray(arr).save(src / "png" / f"im{i}.png")
        rows.append({"path": f"png/im{i}.png", "conditions": ["No Finding", "Effusion|Pleural_Thickening", "Hernia"][i % 3],
                     "patient_id": f"pat{i // 2}", "split": "" if i < 2 else "test",
                     "license": "CC BY-NC-SA 4.0" if i == 5 else "CC BY 4.0"})
    Image.fromarray(rng.integers(0, 255, (64, 80), dtype=np.uint8)).convert("RGB").save(src / "png" / "c.jpg")
    rows.append({"path": "png/c.jpg", "conditions": "Cardiomegaly", "patient_id": "pat9", "split": "val"})
    make_dicom(src / "dcm" / "cr.dcm", chest_like(seed=9))
    rows.append({"path": "dcm/cr.dcm", "conditions": "Mass", "patient_id": "pat10", "split": "train"})
    make_dicom(src / "dcm" / "ct.dcm", chest_like(seed=9), modality="CT")
    rows.append({"path": "dcm/ct.dcm", "conditions": "Mass", "patient_id": "pat11"})
    rows.append({"path": "png/im0.png", "conditions": "Flu", "patient_id": "pat12"})  # unknown label
    rows.append({"path": "png/missing.png", "conditions": "Mass", "patient_id": "pat13"})
    (src / "png" / "im1_copy.png").write_bytes((src / "png" / "im1.png").read_bytes())
    rows.append({"path": "png/im1_copy.png", "conditions": "Mass", "patient_id": "pat14"})  # duplicate pixels
    _write_csv(tmp_path / "labels.csv", rows)

    rep = ingest(src, tmp_path / "labels.csv", tmp_path / "out", progress=False, default_license="hospital")
    assert rep.n_ingested == 8
    reasons = {s["path"]: s["reason"] for s in rep.skipped}
    assert "modality CT" in reasons["dcm/ct.dcm"]
    assert "unknown condition" in reasons["png/im0.png"]
    assert reasons["png/missing.png"] == "file not found"
    assert reasons["png/im1_copy.png"].startswith("duplicate pixels")

    ts = load_trainset(tmp_path / "out")
    assert ts.images.shape == (8, 128, 128) and ts.labels.shape == (8, len(CONDITIONS))
    k = CONDITIONS.index
    assert ts.labels[1, k("Effusion")] == 1 and ts.labels[1, k("Pleural_Thickening")] == 1 and ts.labels[1].sum() == 2
    assert ts.splits[0] == patient_split("pat0") and ts.splits[3] == "test"  # missing split: patient hash
    assert ts.licenses[7] == "hospital"  # the DICOM row had no licence in the CSV
    info = json.loads((tmp_path / "out" / "trainset.json").read_text())
    assert info["n_images"] == 8 and len(info["skipped"]) == 4
    assert info["patients_per_condition"]["Hernia"] == 2
    assert info["share_alike_noncommercial"]["applies"] is True and info["share_alike_noncommercial"]["sources"] == ["local"]
    assert info["share_alike_noncommercial"]["n_images"] == 1
    assert info["fingerprint"] == ts.fingerprint and len(ts.fingerprint) == 64


def _png_source(src, n=3):
    (src / "png").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray((chest_like(seed=i) >> 4).astype(np.uint8)).save(src / "png" / f"im{i}.png")


def test_a_refused_ingest_leaves_the_existing_training_set_untouched(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    _png_source(src)
    _write_csv(tmp_path / "good.csv", [{"path": f"png/im{i}.png", "conditions": "Mass", "patient_id": f"p{i}"} for i in range(3)])
    ingest(src, tmp_path / "good.csv", out, progress=False)
    before = load_trainset(out).fingerprint
    _write_csv(tmp_path / "bad.csv", [{"path": "png/missing.png", "conditions": "Mass", "patient_id": "p9"}])

    rep = ingest(src, tmp_path / "bad.csv", out, progress=False)
    assert rep.n_ingested == 0 and rep.info == {}
    ts = load_trainset(out)
    assert ts.fingerprint == before and len(ts) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "good.csv", "out", "src"]  # no leftovers


def test_an_ingest_with_nothing_usable_writes_no_training_set(tmp_path):
    _png_source(tmp_path / "src")
    _write_csv(tmp_path / "labels.csv", [{"path": "png/im0.png", "conditions": "", "patient_id": "p0"}])
    rep = ingest(tmp_path / "src", tmp_path / "labels.csv", tmp_path / "out", progress=False)
    assert rep.n_ingested == 0
    assert not (tmp_path / "out").exists()  # an empty set would pass for a training set later


def test_a_write_interrupted_midway_keeps_the_old_training_set_whole(tmp_path, monkeypatch):
    import models.trainset as trainset_mod

    src, out = tmp_path / "src", tmp_path / "out"
    _png_source(src)
    _write_csv(tmp_path / "a.csv", [{"path": f"png/im{i}.png", "conditions": "Mass", "patient_id": f"p{i}"} for i in range(3)])
    ingest(src, tmp_path / "a.csv", out, progress=False)
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    _write_csv(tmp_path / "b.csv", [{"path": "png/im0.png", "conditions": "Edema", "patient_id": "p0"}])

    def interrupted(*a, **k):  # images.npy and labels.npy are written by now
        raise KeyboardInterrupt

    monkeypatch.setattr(trainset_mod, "summarise", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ingest(src, tmp_path / "b.csv", out, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.csv", "out", "src"]


def test_ingest_refuses_an_out_folder_that_holds_other_files(tmp_path):
    _png_source(tmp_path / "src")
    _write_csv(tmp_path / "labels.csv", [{"path": "png/im0.png", "conditions": "Mass", "patient_id": "p0"}])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.md").write_text("mine")
    with pytest.raises(IngestError, match=r"--out: .*notes\.md"):
        ingest(tmp_path / "src", tmp_path / "labels.csv", tmp_path / "out", progress=False)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.md"]


def test_a_labels_csv_saved_by_excel_with_bom_crlf_and_spaced_headers_is_read(tmp_path):
    _png_source(tmp_path / "src")
    _write_csv(tmp_path / "plain.csv", [{"path": f"png/im{i}.png", "conditions": "Mass|Edema", "patient_id": f"p{i}"}
                                        for i in range(3)])
    ingest(tmp_path / "src", tmp_path / "plain.csv", tmp_path / "plain", progress=False)
    lines = ["Patient ID , Conditions,Path "] + [f" p{i} , mass | edema ,png/im{i}.png " for i in range(3)]
    (tmp_path / "excel.csv").write_bytes(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8-sig"))

    rep = ingest(tmp_path / "src", tmp_path / "excel.csv", tmp_path / "excel", progress=False)
    assert rep.skipped == [] and rep.n_ingested == 3
    a, b = load_trainset(tmp_path / "plain"), load_trainset(tmp_path / "excel")
    assert a.fingerprint == b.fingerprint and list(a.patient_ids) == list(b.patient_ids)


def test_a_semicolon_delimited_labels_csv_is_read(tmp_path):
    _png_source(tmp_path / "src")
    (tmp_path / "labels.csv").write_text("path;conditions;patient_id\npng/im0.png;Effusion;p0\n")
    rep = ingest(tmp_path / "src", tmp_path / "labels.csv", tmp_path / "out", progress=False)
    assert rep.n_ingested == 1


def test_a_labels_csv_that_is_not_utf8_is_refused_naming_the_line(tmp_path):
    _png_source(tmp_path / "src")
    (tmp_path / "labels.csv").write_bytes("path,conditions,patient_id,source\npng/im0.png,Mass,p0,Hôpital\n".encode("latin-1"))
    with pytest.raises(IngestError, match=r"labels\.csv: line 2 is not UTF-8"):
        ingest(tmp_path / "src", tmp_path / "labels.csv", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_the_ingest_command_refuses_a_csv_without_patient_id_in_one_line_not_a_traceback(tmp_path):
    from typer.testing import CliRunner

    from cli import app

    _png_source(tmp_path / "src")
    (tmp_path / "labels.csv").write_text("path,conditions\npng/im0.png,Mass\n")
    res = CliRunner().invoke(app, ["ingest", str(tmp_path / "src"), "--labels", str(tmp_path / "labels.csv"),
                                   "--out", str(tmp_path / "out")])
    assert res.exit_code == 2
    assert "no column patient_id" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def _ingest_rows(tmp_path, rows, fieldnames=("path", "conditions", "patient_id", "split", "view", "image_id")):
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fieldnames))
        w.writeheader()
        w.writerows(rows)
    rep = ingest(tmp_path / "src", tmp_path / "labels.csv", tmp_path / "out", progress=False)
    return rep, {s["row"]: s["reason"] for s in rep.skipped}


def test_each_skipped_row_names_its_csv_line_and_what_is_wrong(tmp_path):
    _png_source(tmp_path / "src")
    rep, reasons = _ingest_rows(tmp_path, [
        {"path": "png/im0.png", "conditions": "Mass", "patient_id": "p0"},
        {"path": "", "conditions": "Mass", "patient_id": "p1"},
        {"path": "png", "conditions": "Mass", "patient_id": "p2"},
        {"path": "png/im1.png", "conditions": "Mass", "patient_id": "p3", "split": "holdout"},
    ])
    assert rep.n_ingested == 1
    assert reasons == {3: "no path", 4: "a folder, not an image file",
                       5: "unknown split 'holdout' (train, val or test)"}


def test_one_patient_is_never_on_both_sides_of_a_split(tmp_path):
    _png_source(tmp_path / "src")
    rep, reasons = _ingest_rows(tmp_path, [
        {"path": "png/im0.png", "conditions": "Mass", "patient_id": "p0", "split": "train"},
        {"path": "png/im1.png", "conditions": "Mass", "patient_id": "p0", "split": "test"},
        {"path": "png/im2.png", "conditions": "Mass", "patient_id": "p0", "split": "Train"},  # same split, any case
    ])
    assert rep.n_ingested == 2
    assert reasons == {3: "patient already in another split (p0 is in train from row 2; splits must be patient-level)"}
    assert list(load_trainset(tmp_path / "out").splits) == ["train", "train"]


def test_an_image_id_or_a_path_listed_twice_is_skipped_naming_the_first_row(tmp_path):
    _png_source(tmp_path / "src")
    rep, reasons = _ingest_rows(tmp_path, [
        {"path": "png/im0.png", "conditions": "Mass", "patient_id": "p0", "image_id": "A"},
        {"path": "png/im1.png", "conditions": "Mass", "patient_id": "p1", "image_id": "A"},
        {"path": "png/./im0.png", "conditions": "Edema", "patient_id": "p0"},
    ])
    assert rep.n_ingested == 1
    assert reasons == {3: "image_id used twice (A already taken by row 2)",
                       4: "path listed twice (already ingested from row 2)"}


def test_a_lateral_view_in_the_csv_is_skipped_like_a_lateral_dicom(tmp_path):
    _png_source(tmp_path / "src")
    rep, reasons = _ingest_rows(tmp_path, [
        {"path": "png/im0.png", "conditions": "Mass", "patient_id": "p0", "view": "PA"},
        {"path": "png/im1.png", "conditions": "Mass", "patient_id": "p1", "view": "lateral"},
    ])
    assert rep.n_ingested == 1 and "lateral view (LATERAL" in reasons[3]


def test_a_blank_image_is_skipped(tmp_path):
    img, skipped = _ingest_one(tmp_path, lambda p: make_dicom(p, np.full((200, 200), 700, np.uint16)))
    assert img is None and skipped[0]["reason"].startswith("blank image")


def test_a_multi_frame_dicom_is_refused_with_its_frame_count(tmp_path):
    px = chest_like()

    def make(path):
        make_dicom(path, px, raw_pixel_bytes=np.stack([px, px, px]).tobytes())
        edit_dicom(path, lambda ds: setattr(ds, "NumberOfFrames", 3))

    img, skipped = _ingest_one(tmp_path, make)
    assert img is None and skipped[0]["reason"].startswith("multi-frame DICOM (3 frames)")


@pytest.mark.parametrize("edit", [
    lambda ds: (setattr(ds, "WindowCenter", 1000), setattr(ds, "WindowWidth", 0)),
    lambda ds: (setattr(ds, "WindowCenter", 1000), setattr(ds, "WindowWidth", 2000), setattr(ds, "VOILUTFunction", "LOG")),
], ids=["width 0", "unknown function"])
def test_an_invalid_window_is_ignored_like_a_viewer_does_not_a_crash_of_the_run(tmp_path, edit):
    px = chest_like()
    plain = _reference(tmp_path / "plain", px)
    img, skipped = _ingest_one(tmp_path / "bad", lambda p: edit_dicom(make_dicom(p, px), edit))
    assert skipped == [] and np.array_equal(img.astype(int), plain)


def test_a_malformed_modality_lut_skips_the_file_not_the_run(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    def short_lut(ds):
        item = Dataset()
        item.LUTDescriptor = [4096, 0, 16]
        item.add_new(0x00283006, "US", [1, 2, 3])  # LUT Data: 3 entries for 4096
        ds.ModalityLUTSequence = Sequence([item])

    img, skipped = _ingest_one(tmp_path, lambda p: edit_dicom(make_dicom(p, chest_like()), short_lut))
    assert img is None and skipped[0]["reason"].startswith("invalid Modality LUT")


def test_presentation_lut_shape_inverse_is_shown_inverted_so_bone_is_bright(tmp_path):
    px = chest_like()
    mono2 = _reference(tmp_path / "m2", px)
    inverse, skipped = _ingest_one(tmp_path / "inv", lambda p: edit_dicom(
        make_dicom(p, 4095 - px), lambda ds: setattr(ds, "PresentationLUTShape", "INVERSE")))
    assert skipped == [] and np.abs(inverse.astype(int) - mono2).mean() < 2.0
    # MONOCHROME1 carries INVERSE as well (the DX module asks for it): still one inversion, not two
    mono1, _ = _ingest_one(tmp_path / "m1", lambda p: edit_dicom(
        make_dicom(p, 4095 - px, photometric="MONOCHROME1"), lambda ds: setattr(ds, "PresentationLUTShape", "INVERSE")))
    assert np.abs(mono1.astype(int) - mono2).mean() < 2.0


def test_a_palette_colour_dicom_is_refused(tmp_path):
    img, skipped = _ingest_one(tmp_path, lambda p: make_dicom(p, chest_like(), photometric="PALETTE COLOR"))
    assert img is None and "PALETTE COLOR" in skipped[0]["reason"]


@pytest.mark.parametrize("body_part", ["PORT CHEST", "CHEST_PA", "THORAX AP"])
def test_free_text_chest_body_parts_are_accepted(tmp_path, body_part):
    img, skipped = _ingest_one(tmp_path, lambda p: make_dicom(p, chest_like(), body_part=body_part))
    assert skipped == [] and img is not None


def test_oblique_views_are_skipped_as_not_frontal(tmp_path):
    img, skipped = _ingest_one(tmp_path, lambda p: make_dicom(p, chest_like(), view="RLO"))
    assert img is None and "RLO" in skipped[0]["reason"]


def test_an_image_over_pillows_decompression_bomb_limit_is_skipped_not_fatal(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the real limit is ~179 M pixels: too big for a test
    img, skipped = _ingest_one(tmp_path, lambda p: (p.parent.mkdir(parents=True), Image.fromarray(
        (chest_like() >> 4).astype(np.uint8)).save(p)), name="x.png")
    assert img is None and "DecompressionBombError" in skipped[0]["reason"]


def test_a_labels_csv_written_on_windows_with_backslash_paths_finds_its_files(tmp_path):
    _png_source(tmp_path / "src")
    rep, reasons = _ingest_rows(tmp_path, [
        {"path": "png\\im0.png", "conditions": "Mass", "patient_id": "p0"},
        {"path": ".\\png\\im1.png", "conditions": "Mass", "patient_id": "p1"},
        {"path": "png/im0.png", "conditions": "Mass", "patient_id": "p0"},
    ])
    assert rep.n_ingested == 2 and reasons == {4: "path listed twice (already ingested from row 2)"}
