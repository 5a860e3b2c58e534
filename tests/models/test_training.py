"""A tiny training run: classifier, GAN that saves, resumes from its step, and produces a bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.bundle import load_bundle
from models.conditions import CONDITIONS
from models.train import ClassifierConfig, GanConfig, sample_weights, train_classifier, train_gan, translate
from models.trainset import write_trainset

TINY = dict(nz=16, ngf=4, ndf=4, emb_dim=8, batch_size=8, eval_every=2, ckpt_every=2, n_eval=8, bn_calib=16,
            progress=False, threads=2)


@pytest.fixture
def tiny_trainset(tmp_path):
    rng = np.random.default_rng(0)
    n = 40
    images = rng.integers(0, 256, (n, 128, 128), dtype=np.uint8)
    labels = np.zeros((n, len(CONDITIONS)), np.uint8)
    labels[np.arange(n), rng.integers(0, 4, n)] = 1
    labels[0, 8] = 1  # one multi-label image with a rare class
    splits = np.array(["train"] * 28 + ["val"] * 6 + ["test"] * 6)
    meta = [{"image_id": f"i{i}", "patient_id": f"p{i // 2}", "split": s, "source": "nih" if i % 2 else "kermany",
             "license": "CC BY 4.0", "view": "PA"} for i, s in enumerate(splits)]
    write_trainset(tmp_path / "ts", images, labels, meta)
    return tmp_path / "ts"


def test_sqrt_balancing_weights():
    labels = np.zeros((110, 2), np.uint8)
    labels[:100, 0] = 1
    labels[100:, 1] = 1
    w = sample_weights(labels, "sqrt")
    share = w[100:].sum() / w.sum()
    assert abs(share - np.sqrt(10) / (np.sqrt(10) + np.sqrt(100))) < 1e-9  # classes seen ~ sqrt(n_c)
    assert abs(sample_weights(labels, "none")[100:].sum() - 10 / 110) < 1e-9
    assert abs(sample_weights(labels, "full")[100:].sum() - 0.5) < 1e-9


def test_translate_shifts_and_pads_with_air():
    x = torch.zeros(4, 1, 16, 16)
    y = translate(x, 3, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and set(torch.unique(y).tolist()) <= {-1.0, 0.0}
    assert torch.equal(translate(x, 0), x)


def test_tiny_gan_run_saves_resumes_and_bundles(tiny_trainset, tmp_path):
    clf_path = train_classifier(ClassifierConfig(trainset=str(tiny_trainset), out=str(tmp_path / "clf"), width=4,
                                                 max_steps=3, batch_size=8, progress=False))
    out = tmp_path / "gan"
    s1 = train_gan(GanConfig(trainset=str(tiny_trainset), out=str(out), classifier=str(clf_path), iters=3, **TINY))
    assert s1["steps"] == 3
    ck = torch.load(out / "ckpt.pt", weights_only=True)
    assert ck["step"] == 3 and ck["best_step"] == 2  # val FD measured at step 2, kept as best

    s2 = train_gan(GanConfig(trainset=str(tiny_trainset), out=str(out), classifier=str(clf_path), iters=5, **TINY))
    assert s2["steps"] == 5
    hist = json.loads((out / "history.json").read_text())["history"]
    assert [h["step"] for h in hist] == [2, 3, 4, 5]  # continued from step 3, not from 0

    b = load_bundle(out / "bundle.pt")
    assert b.config["ngf"] == 4 and b.conditions == CONDITIONS and b.discriminator is not None
    x = b.generate(torch.randn(3, 16), b.condition_vectors(["Mass", "Hernia", "No Finding"]))
    assert x.shape == (3, 1, 128, 128)
    card = b.card
    assert card["training_data"]["fingerprint"] == json.loads((tiny_trainset / "trainset.json").read_text())["fingerprint"]
    assert card["training"]["steps"] == 5 and card["classifier"]["trained"] is True


def test_resumed_run_draws_the_same_batches(tiny_trainset, tmp_path):
    # 4 steps straight vs 2 + 2 with a resume: same generator weights (batches come from (seed, step))
    a = tmp_path / "a"
    train_gan(GanConfig(trainset=str(tiny_trainset), out=str(a), iters=4, **TINY))
    b = tmp_path / "b"
    train_gan(GanConfig(trainset=str(tiny_trainset), out=str(b), iters=2, **TINY))
    train_gan(GanConfig(trainset=str(tiny_trainset), out=str(b), iters=4, **TINY))
    ga = torch.load(a / "ckpt.pt", weights_only=True)["G"]
    gb = torch.load(b / "ckpt.pt", weights_only=True)["G"]
    assert all(torch.allclose(ga[k].float(), gb[k].float(), atol=1e-5) for k in ga)


def test_tiny_dp_run_reports_epsilon(tiny_trainset, tmp_path):
    pytest.importorskip("opacus")
    out = tmp_path / "dp"
    s = train_gan(GanConfig(trainset=str(tiny_trainset), out=str(out), iters=100, dp=True, epsilon=8.0,
                            delta=1e-3, dp_epochs=1, **TINY))
    assert s["steps"] == 4  # capped at dp_epochs * ceil(28 / 8)
    assert 0 < s["dp"]["epsilon"] <= 8.0 + 1e-6 and s["dp"]["noise_multiplier"] > 0
    card = load_bundle(out / "bundle.pt").card
    dp = card["differential_privacy"]
    assert dp["delta"] == 1e-3 and dp["max_grad_norm"] == 1.0 and dp["noise_multiplier"] > 0 and dp["epsilon"] <= 8.0 + 1e-6
    assert card["config"]["d_norm"] == "gn"
