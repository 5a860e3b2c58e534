"""`xraysynth models bootstrap-default|list|publish|retire` on the test database and S3 store, with a
tiny untrained bundle standing in for the shipped checkpoint and synthetic "patients" for data."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")

from cli import app  # noqa: E402

runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, list(args), prog_name="xraysynth", env={"COLUMNS": "250"})


def write_hospital_export(folder, n_patients: int = 24, per_patient: int = 3, seed: int = 0) -> None:
    """PNG files + labels.csv shaped like ../shared/data/cxr (what `ingest` reads)."""
    from PIL import Image

    from models.conditions import CONDITIONS

    rng = np.random.default_rng(seed)
    (folder / "png").mkdir(parents=True)
    rows = []
    for p in range(n_patients):
        base = rng.integers(30, 220, size=(16, 16)).astype(np.float32)
        base = np.kron(base, np.ones((8, 8), np.float32))  # blocky 128 px "anatomy" per patient
        for k in range(per_patient):
            img = np.clip(np.roll(base, k, axis=1) + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)
            rel = f"png/p{p:03d}_{k}.png"
            Image.fromarray(img).save(folder / rel)
            rows.append({"path": rel, "conditions": CONDITIONS[p % 3], "patient_id": f"fx:{p}",
                         "split": ("train", "train", "val", "test")[p % 4], "source": "fixture",
                         "license": "CC BY 4.0", "view": "PA"})
    with open(folder / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.fixture
def shipped(tmp_path, monkeypatch, clean):
    from cli import hospital
    from models.bundle import save_bundle, untrained_bundle
    from service.settings import get_settings

    ckpt = tmp_path / "checkpoints" / "default"
    ckpt.mkdir(parents=True)
    b = untrained_bundle(seed=0)
    save_bundle(ckpt / "bundle.pt", generator=b.generator, classifier=b.classifier, discriminator=b.discriminator,
                conditions=b.conditions, config=b.config, card={})
    (ckpt / "card.json").write_text(json.dumps({"name": "cxr-dcgan", "version": "t1"}))
    monkeypatch.setattr(hospital, "default_checkpoint_dir", lambda: ckpt)
    monkeypatch.setenv("XRAYSYNTH_TRAINSET_DIR", str(tmp_path / "trainset"))
    monkeypatch.setenv("XRAYSYNTH_SHARED_DATA_DIR", str(tmp_path / "hospital-export"))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_bootstrap_without_data_leaves_a_draft_then_publishes_once_data_exists(shipped, api, admin, researcher):
    r = cli("models", "bootstrap-default")
    assert r.exit_code == 0, r.output
    assert "draft" in r.output and "no training data" in r.output
    listed = cli("models", "list", "--all").output
    assert "cxr-dcgan:t1" in listed and "draft" in listed and "privacy index" in listed
    assert api.get("/v1/models", headers=researcher.headers).json()["models"] == []

    write_hospital_export(shipped / "hospital-export")
    r = cli("models", "bootstrap-default")
    assert r.exit_code == 0, r.output
    assert "published: cxr-dcgan:t1" in r.output
    assert (shipped / "trainset" / "trainset.json").exists()
    models = api.get("/v1/models", headers=researcher.headers).json()["models"]
    assert [(m["name"], m["version"]) for m in models] == [("cxr-dcgan", "t1")]

    r = cli("models", "bootstrap-default")  # idempotent
    assert r.exit_code == 0 and "published: cxr-dcgan:t1" in r.output

    from service import storage
    from service.settings import get_settings

    key = "models/cxr-dcgan/t1/bundle.pt"
    kept = storage.get_bytes(get_settings().private_bucket, key)
    storage.internal_client().delete_object(Bucket=get_settings().private_bucket, Key=key)
    r = cli("models", "bootstrap-default")  # a database that outlived the object store is reported
    assert "missing from the S3 store: cxr-dcgan:t1" in r.output
    storage.put_bytes(get_settings().private_bucket, key, kept)

    assert cli("models", "retire", "cxr-dcgan:t1", "--note", "test").exit_code == 0
    r = cli("models", "bootstrap-default")
    assert "retired by an admin" in r.output  # an admin's retirement is not undone
    assert api.get("/v1/models", headers=researcher.headers).json()["models"] == []
    assert cli("models", "publish", "cxr-dcgan:t1").exit_code == 1  # only drafts publish

    audit = api.get("/v1/audit", headers=admin.headers, params={"actor": "cli"}).json()
    actions = [e["action"] for e in audit["events"]]
    assert {"model.register", "model.publish", "model.retire"} <= set(actions)


def test_without_a_shipped_checkpoint_bootstrap_says_so(shipped, monkeypatch):
    from cli import hospital

    monkeypatch.setattr(hospital, "default_checkpoint_dir", lambda: shipped / "nowhere")
    r = cli("models", "bootstrap-default")
    assert r.exit_code == 0 and "no shipped default" in r.output
