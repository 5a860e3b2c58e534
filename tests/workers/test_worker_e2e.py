"""End to end on real services and a real worker process: request → admin approval → worker → ready →
download with the researcher CLI → every file verified; then the signed-URL rules on what it made."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import tarfile
import time
from pathlib import Path

import httpx
import numpy as np
import pydicom
from PIL import Image
from typer.testing import CliRunner

from models.faithfulness import with_heatmap_faithfulness
from service.db import session_scope
from service.modelversions.models import ModelVersion
from tests.workers.conftest import (
    PLANT_SEED,
    PLANT_SPEC,
    PLANTED,
    approve,
    get_dataset,
    provenance,
    release_object,
    request_dataset,
    wait_status,
)

REPO_RUNS = Path(__file__).resolve().parents[2] / "runs"
MEASURED_HEATMAPS = Path(__file__).resolve().parents[1] / "fixtures" / "plain_gradcam_heatmaps.json"


def cli(*args: str):
    from cli import app

    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return result


def tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_request_to_verified_download(model_version, toy_model, researcher, researcher_b, admin, api, api_server,
                                      start_worker, tmp_path):
    # the model's card carries a heatmap measurement in which Atelectasis and Mass are uninformative
    with session_scope() as s:
        mv = s.get(ModelVersion, model_version.id)
        mv.card = with_heatmap_faithfulness(mv.card, json.loads(MEASURED_HEATMAPS.read_text()))
    png_id = request_dataset(api, researcher, PLANT_SPEC, PLANT_SEED, "png", heatmaps=True)
    dcm_id = request_dataset(api, researcher, {"Mass": 5, "No Finding": 4}, 7, "dicom", heatmaps=False)
    approve(api, admin, png_id)
    approve(api, admin, dcm_id)
    worker = start_worker()
    png = wait_status(api, researcher, png_id, "ready", workers=[worker])
    wait_status(api, researcher, dcm_id, "ready", workers=[worker])
    assert png["progress"] == {"done": 24, "total": 24}

    # -- the researcher CLI downloads and verifies both ------------------------------------------------
    auth = ["--api-url", api_server, "--api-key", researcher.key]
    for ds_id in (png_id, dcm_id):
        r = cli("download", ds_id, "--out", str(tmp_path / ds_id), "--parallel", "3", *auth)
        assert r.exit_code == 0, r.output
        assert "verified" in r.output

    # PNG dataset: manifest = images, each file and heatmap in its shard, hashes match
    out = tmp_path / png_id
    listing = json.loads((out / "download.json").read_text())["files"]
    for name, meta in listing.items():
        assert sha((out / name).read_bytes()) == meta["sha256"]
    rows = list(csv.DictReader(io.StringIO((out / "manifest.csv").read_text())))
    assert [int(r["index"]) for r in rows] == list(range(24))
    shards = sorted((out / "shards").glob("shard-*.tar"))
    assert len(shards) == 3
    members = {}
    for p in shards:
        m = tar_members(p)
        assert list(m) == sorted(m)  # WebDataset order
        members.update({(f"shards/{p.name}", k): v for k, v in m.items()})
    for r in rows:
        img = members[(r["shard"], r["file"])]
        assert sha(img) == r["sha256"]
        assert Image.open(io.BytesIO(img)).size == (128, 128)
        heat = Image.open(io.BytesIO(members[(r["shard"], r["heatmap_file"])]))
        assert heat.size == (32, 32) and heat.mode == "L"
        meta = json.loads(members[(r["shard"], r["file"].replace(".png", ".json"))])
        assert meta["index"] == int(r["index"]) and meta["condition"] == r["condition"]
        assert meta["nn_distance"] is not None and meta["model_version"]["id"] == str(model_version.id)
    assert Image.open(out / "preview.png").format == "PNG"
    REPO_RUNS.mkdir(exist_ok=True)
    shutil.copy(out / "preview.png", REPO_RUNS / "preview-e2e.png")

    # no released image is a training image: pixel hashes against the whole training set (the planted
    # indices would be exact copies had the filter not replaced them)
    train_hashes = {sha(np.ascontiguousarray(img).tobytes()) for img in toy_model.trainset.images}
    released = [np.asarray(Image.open(io.BytesIO(members[(r["shard"], r["file"])]))) for r in rows]
    assert all(px.dtype == np.uint8 and px.shape == (128, 128) for px in released)
    assert not {sha(np.ascontiguousarray(px).tobytes()) for px in released} & train_hashes

    # the filter ran on every released image, and the planted copies were replaced
    prov = provenance(png_id)
    assert len(prov) == 24 and all(p.nn_distance is not None for p in prov)
    assert {p.index for p in prov if p.attempt > 0} >= set(PLANTED)
    card = json.loads((out / "dataset_card.json").read_text())
    f = card["privacy"]["memorisation_filter"]
    assert f["n_rejected"] >= len(PLANTED) and f["n_generated"] == 24 + f["n_rejected"]
    assert card["training_data"]["share_alike_noncommercial"]["applies"] is True
    assert "CC BY-NC-SA" in (out / "dataset_card.md").read_text()
    assert [a["reviewer"] for a in card["approvals"]] == [admin.name]
    unin = card["heatmap_faithfulness"]["uninformative_conditions"]
    assert set(unin) == {"Atelectasis", "Mass"} and "no evidence" in unin["Mass"]
    assert "Heatmaps are uninformative for Atelectasis" in (out / "dataset_card.md").read_text()
    evidence = json.loads(release_object(png_id, "evidence.json", bucket="private"))
    assert evidence["n_rejected"] == f["n_rejected"] and evidence["closest_pairs"]
    assert evidence["pairs_png"]["real_images"] == "training set (128 px)"
    assert release_object(png_id, "pairs.png", bucket="private")[:8] == b"\x89PNG\r\n\x1a\n"

    # DICOM dataset: readable, marked synthetic, provenance inside; no heatmaps were asked for
    out = tmp_path / dcm_id
    rows = list(csv.DictReader(io.StringIO((out / "manifest.csv").read_text())))
    assert len(rows) == 9 and all(r["heatmap_file"] == "" for r in rows)
    seen = 0
    for p in sorted((out / "shards").glob("*.tar")):
        for name, data in tar_members(p).items():
            assert not name.endswith(".heatmap.png")
            if name.endswith(".dcm"):
                d = pydicom.dcmread(io.BytesIO(data))
                assert "SYNTHETIC" in str(d.PatientName) and d.PatientID.startswith("SYNTHETIC")
                assert d.ConversionType == "SYN" and d.pixel_array.shape == (128, 128)
                assert json.loads(d.ImageComments)["synthetic"] is True
                assert not d.get("PatientBirthDate")
                seen += 1
    assert seen == 9

    # -- signed URLs ---------------------------------------------------------------------------------
    # another researcher cannot get URLs for it
    assert api.get(f"/v1/datasets/{png_id}/download", headers=researcher_b.headers).status_code == 404
    # a tampered URL is refused
    files = api.get(f"/v1/datasets/{png_id}/download", headers=researcher.headers).json()["files"]
    url = next(f["url"] for f in files if f["name"] == "manifest.csv")
    assert httpx.get(url).status_code == 200
    assert httpx.get(url.replace("manifest.csv", "dataset_card.json")).status_code == 403
    assert httpx.get(url.replace("X-Amz-Expires=", "X-Amz-Expires=9")).status_code == 403
    # an expired URL is refused
    short = api.get(f"/v1/datasets/{png_id}/download", params={"expires_in": 1}, headers=researcher.headers).json()
    time.sleep(2.2)
    assert httpx.get(short["files"][0]["url"]).status_code == 403
    # the CLI notices expiry mid-way, refreshes once and goes on
    from cli.researcher import Manifest, fetch_file

    with httpx.Client(base_url=api_server, headers={"Authorization": f"Bearer {researcher.key}"}) as http:
        m = Manifest(http, png_id, expires_in=1)
        time.sleep(2.2)
        entry = m.files["shards/shard-00001.tar"]
        assert fetch_file(http, m, entry, tmp_path / "again", lambda n: None) == "ok"
        assert m.refreshes == 1
    # ...and resumes a partial file
    part = tmp_path / "again" / "shards" / "shard-00002.tar.part"
    part.write_bytes((tmp_path / png_id / "shards" / "shard-00002.tar").read_bytes()[:5000])
    with httpx.Client(base_url=api_server, headers={"Authorization": f"Bearer {researcher.key}"}) as http:
        m = Manifest(http, png_id, expires_in=None)
        assert fetch_file(http, m, m.files["shards/shard-00002.tar"], tmp_path / "again", lambda n: None) == "resumed"
    # a revoked dataset's earlier URLs stop working
    r = api.post(f"/v1/datasets/{png_id}/revoke", headers=admin.headers, json={"reason": "test revocation"})
    assert r.status_code == 200, r.text
    assert httpx.get(url).status_code in (403, 404)
    assert api.get(f"/v1/datasets/{png_id}/download", headers=researcher.headers).status_code == 410
    assert get_dataset(api, researcher, dcm_id)["status"] == "ready"

    # the CLI's request command posts a request that waits for review
    r = cli("request", "--condition", "Mass=3", "--condition", "No Finding=2", "--seed", "9",
            "--purpose", "a second small set for the CLI test", *auth)
    assert r.exit_code == 0, r.output
    assert "pending_review" in r.output
