"""Evaluation end to end on a tiny bundle (the code path, not the numbers) and the registry helpers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.bundle import load_bundle, save_bundle, untrained_bundle
from models.conditions import CONDITIONS
from models.evaluate import EvalConfig, evaluate_bundle
from models.privacy.reid import NCCSpace, bundle_verifier
from models.registry import build_card, bundle_checkpoint, file_checkpoint, with_card
from models.trainset import load_trainset, write_trainset
from service.layout import checkpoint_key as object_key
from service.modelversions.rows import model_version_fields
from service.modelversions.service import researcher_card as public_card

SMALL = {"nz": 16, "ngf": 4, "ndf": 4, "emb_dim": 8, "classifier_width": 4}


@pytest.fixture
def tiny(tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    images = rng.integers(0, 256, (n, 128, 128), dtype=np.uint8)
    labels = np.zeros((n, len(CONDITIONS)), np.uint8)
    labels[np.arange(n), np.arange(n) % 4] = 1
    labels[::7, 8] = 1
    splits = np.array((["train"] * 3 + ["test"] * 2) * (n // 5))
    meta = [{"image_id": f"i{i}", "patient_id": f"p{i}", "split": s, "source": "nih" if i % 3 else "ieee8023",
             "license": "CC BY-NC-SA" if i % 3 == 0 else "NIH", "view": "PA"} for i, s in enumerate(splits)]
    write_trainset(tmp_path / "ts", images, labels, meta)
    ts = load_trainset(tmp_path / "ts")
    b = untrained_bundle(config=SMALL)
    card = build_card(trainset=ts, config=b.config, training={"steps": 0})
    path = save_bundle(tmp_path / "b.pt", generator=b.generator, classifier=b.classifier, discriminator=None,
                       conditions=b.conditions, config=b.config, card=card, verifier=bundle_verifier(NCCSpace()))
    return tmp_path, ts, path


def test_evaluate_writes_the_metrics_section_and_keeps_the_verifier(tiny):
    tmp, _, path = tiny
    m = evaluate_bundle(EvalConfig(model=str(path), trainset=str(tmp / "ts"), out=str(tmp / "e.pt"),
                                   card_json=str(tmp / "card.json"), eval_epochs=0.2, eval_width=4, topup_to=30,
                                   fidelity_repeats=1, membership=False))
    for key in ("frechet", "precision_recall_coverage", "fidelity", "tstr", "augmentation", "goals"):
        assert key in m
    fd = m["frechet"]["all_sources"]
    assert fd["fd"] >= 0 and fd["floor"] >= 0 and fd["n_synthetic"] == 36 and fd["n_reference"] == 24
    assert "nih_only" in m["frechet"] and "nih_only" in m["tstr"] and "nih_only" in m["augmentation"]
    assert m["augmentation"]["synthetic_added"]["Hernia"] == 30 - 6
    evaluated = load_bundle(tmp / "e.pt")
    assert evaluated.card["metrics"]["frechet"]["all_sources"]["fd"] == fd["fd"]
    # an evaluated bundle that lost its verifier would publish without the re-identification check
    assert evaluated.verifier is not None and evaluated.verifier["kind"] == "ncc"
    assert json.loads((tmp / "card.json").read_text())["metrics"]["extractor"].startswith("xraysynth condition classifier")


def test_card_licences_and_registry_fields(tiny):
    _, ts, path = tiny
    card = load_bundle(path).card
    assert card["training_data"]["fingerprint"] == ts.fingerprint
    assert card["training_data"]["patients_per_condition"]["No Finding"] == 9  # train split only
    assert card["licences"]["share_alike_noncommercial"]["applies"] is True
    assert "CC BY-NC-SA" in card["licences"]["synthetic_output_licence"]
    assert any("confounded" in c for c in card["caveats"])
    data, sha = file_checkpoint(path)
    assert len(sha) == 64 and data == path.read_bytes()
    row = model_version_fields(card=card, sha256=sha, name="cxr", version="1", size_bytes=len(data))
    assert row["checkpoint_key"] == object_key("cxr", "1") == "models/cxr/1/bundle.pt"
    assert row["status"] == "draft" and row["dp_epsilon"] is None and row["conditions"] == CONDITIONS
    new_bytes, new_sha = with_card(path, {**card, "metrics": {"x": 1}})
    assert new_sha != sha and load_bundle(new_bytes).card["metrics"] == {"x": 1}
    b = load_bundle(path)
    assert bundle_checkpoint(b)[1] == bundle_checkpoint(b)[1]  # serialisation is deterministic
    pub = public_card(card)
    assert "config" not in pub and pub["training_data"]["fingerprint"] == ts.fingerprint


def test_untrained_bundle_is_generatable_end_to_end():
    b = untrained_bundle(config=SMALL)
    x = b.generate(torch.randn(2, 16), b.condition_vectors(["Mass", "Mass"]))
    assert x.shape == (2, 1, 128, 128)
