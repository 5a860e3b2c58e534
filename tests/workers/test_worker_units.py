"""Fast checks of the worker's pure parts: deterministic encoding, image order, torch-free imports."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile

import numpy as np
import pydicom

from workers.encode import EncodeContext, ImageRecord, ShardTarWriter, encode_chunk

ROOT = "2.25.228568378074534275219737398473140366002."


def records(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [ImageRecord(i, "Mass", 7, i % 2, 0.25, 1.5, rng.integers(0, 256, (128, 128), dtype=np.uint8),
                        rng.integers(0, 256, (32, 32), dtype=np.uint8)) for i in range(n)]


def ctx(fmt="dicom", dataset_id="d1"):
    return EncodeContext(dataset_id, fmt, {"id": "m", "name": "cxr", "version": "1"}, 6, ROOT, {"Mass": 11})


def tar_bytes(encoded) -> bytes:
    buf = io.BytesIO()
    w = ShardTarWriter(buf)
    for e in encoded:
        w.add_sample(e)
    w.close()
    return buf.getvalue()


def test_dicom_is_deterministic_synthetic_and_readable():
    a, b = encode_chunk(records(), ctx()), encode_chunk(records(), ctx())
    assert tar_bytes(a) == tar_bytes(b)
    other = encode_chunk(records(), ctx(dataset_id="d2"))
    d1 = pydicom.dcmread(io.BytesIO(a[0].members[0][1]))
    d2 = pydicom.dcmread(io.BytesIO(other[0].members[0][1]))
    assert d1.SOPInstanceUID.startswith(ROOT) and d1.SOPInstanceUID != d2.SOPInstanceUID  # unique per dataset
    assert str(d1.PatientName).startswith("SYNTHETIC") and d1.ConversionType == "SYN"
    assert not d1.get("StudyDate") and not d1.get("PatientBirthDate")
    assert (d1.pixel_array == records()[0].pixels).all()


def test_each_dicom_image_is_a_synthetic_patient_with_its_own_study_and_series():
    # DICOM: a study belongs to one patient, a series to one study. One study per dataset held every
    # image's own synthetic patient, which a PACS importer refuses (patient mismatch) or merges.
    files = [pydicom.dcmread(io.BytesIO(e.members[0][1])) for e in encode_chunk(records(4), ctx())]
    assert len({d.PatientID for d in files}) == 4
    studies = {}
    for d in files:
        studies.setdefault(d.StudyInstanceUID, set()).add(d.PatientID)
    assert all(len(patients) == 1 for patients in studies.values()), studies
    series_study = {}
    for d in files:
        assert series_study.setdefault(d.SeriesInstanceUID, d.StudyInstanceUID) == d.StudyInstanceUID
    assert all(d.StudyInstanceUID.startswith(ROOT) and d.SeriesInstanceUID.startswith(ROOT) for d in files)
    assert all("Mass" in d.SeriesDescription for d in files)  # the condition still names the series


def test_tar_is_webdataset_ordered_with_fixed_headers():
    with tarfile.open(fileobj=io.BytesIO(tar_bytes(encode_chunk(records(), ctx("png"))))) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names) and names[:3] == ["000000.heatmap.png", "000000.json", "000000.png"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in members} == {(0, 0, 0, "", 0o444)}


def test_image_order_follows_the_model_not_the_request():
    from service.layout import image_blocks
    from workers.device import block_of
    from workers.produce import preview_indices

    model = ["No Finding", "Atelectasis", "Mass"]
    blocks = image_blocks({"Mass": 3, "No Finding": 2}, model)
    assert blocks == [("No Finding", 2), ("Mass", 3)]
    assert block_of(np.arange(5), blocks).tolist() == [0, 0, 1, 1, 1]
    assert preview_indices(blocks, 2).tolist() == [0, 1, 2, 3]


def test_worker_parent_and_researcher_cli_never_import_torch(infra):
    import os

    code = ("import sys, workers.celery_app, workers.tasks, workers.sweeper, cli; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, **infra.env})


def test_conditions_option_parsing():
    from cli.researcher import parse_conditions

    assert parse_conditions(["Mass=100", "Pleural_Thickening=5", "Mass=1"]) == {"Mass": 101, "Pleural_Thickening": 5}


def test_the_markdown_card_points_to_where_its_citations_are():
    # It said "the training-data sources listed below" while they were listed above it.
    from workers.card import card_obligations, render_card_md

    card = {
        "dataset": {"id": "d1", "total_images": 2, "released_at": "2026-01-01T00:00:00", "licence": None},
        "request": {"conditions": {"Mass": 2}, "format": "png", "heatmaps": True, "seed": 1, "purpose": "p"},
        "model": {"name": "m", "version": "1", "architecture": "a", "image_size": 128},
        "approvals": [], "metrics": {"model": {}, "dataset": {"per_condition": {}}},
        "privacy": {"memorisation_filter": {"n_rejected": 0, "n_generated": 2, "threshold": 0.3}},
        "training_data": {"licences": {"CC BY 4.0": 3}, "citations": {"nih": "Wang X et al. 2017."}},
        "obligations": card_obligations({"applies": True, "sources": ["ieee8023"]}),
        "files": {"manifest": {"columns": ["index"]}, "shards": [], "layout": "tars"},
        "how_to_cite": {"text": "cite me", "bibtex": "@misc{x}"},
    }
    md = render_card_md(card)
    assert "listed below" not in md
    assert "(under Training data)" in md and "## Training data" in md and "## How to cite" in md
    assert md.index("- nih: Wang X et al. 2017.") < md.index("## Obligations")
