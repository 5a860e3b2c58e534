"""The seed's experiment at toy size: thresholds from val, a balanced top-up, figures per seed."""

from __future__ import annotations

import numpy as np
import pytest

from models.bundle import save_bundle, untrained_bundle
from models.seed_experiment import best_threshold, class_metrics, run

from .tiny import write_tiny_trainset


def test_the_val_threshold_maximises_balanced_accuracy():
    y = np.array([0, 0, 0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    t = best_threshold(y, p)
    assert 0.6 < t <= 0.7
    m = class_metrics(y, p, t)
    assert m["balanced_accuracy"] == 1.0 and m["auc"] == 1.0 and m["n_pos"] == 2


def test_the_top_up_brings_every_class_to_the_target_and_both_arms_are_scored_per_seed(tmp_path):
    ts = write_tiny_trainset(tmp_path / "ts", n=80)
    b = untrained_bundle(config={"nz": 16, "ngf": 4, "ndf": 4, "emb_dim": 8, "classifier_width": 4})
    save_bundle(tmp_path / "b.pt", generator=b.generator, classifier=b.classifier, discriminator=b.discriminator,
                conditions=b.conditions, config=b.config, card=b.card)
    classes = ["No Finding", "Atelectasis", "Cardiomegaly"]
    res = run(tmp_path / "b.pt", ts, classes, seeds=(0, 1), target=30, width=4, max_steps=2)
    counts = res["train_counts"]
    assert res["n_synthetic"] == sum(max(0, 30 - counts[c]) for c in classes)
    assert [r["seed"] for r in res["runs"]["real"]] == [0, 1] and len(res["runs"]["real+synthetic"]) == 2
    s = res["summary"]
    assert s["real"]["macro_auc"]["n_seeds"] in (0, 1, 2)
    assert s["real"]["rare_classes"] == ["Cardiomegaly"]
    per = res["runs"]["real"][0]["per_class"]["No Finding"]
    assert 0 <= per["threshold"] <= 1 and per["n_pos"] == res["test_positives"]["No Finding"]
    with pytest.raises(ValueError):
        run(tmp_path / "b.pt", ts, ["Not A Condition"], seeds=(0,), target=5, width=4, max_steps=1)


def test_the_experiments_summary_goes_into_the_card_researchers_read_beside_earlier_runs(tmp_path):
    from models.bundle import load_bundle
    from models.seed_experiment import CARD_KEY, main
    from service.modelversions.service import researcher_card

    ts = write_tiny_trainset(tmp_path / "ts", n=80)
    b = untrained_bundle(config={"nz": 16, "ngf": 4, "ndf": 4, "emb_dim": 8, "classifier_width": 4})
    path = save_bundle(tmp_path / "b.pt", generator=b.generator, classifier=b.classifier, discriminator=b.discriminator,
                       conditions=b.conditions, config=b.config, card={**b.card, CARD_KEY: {"all": {"kept": True}}})
    main(["--bundle", str(path), "--trainset", str(ts), "--classes", "No Finding,Cardiomegaly", "--seeds", "0",
          "--target", "30", "--epochs", "0.1", "--width", "4", "--out", str(tmp_path / "r.json"), "--write-card"])
    card = load_bundle(path).card
    entry = card[CARD_KEY]["No Finding,Cardiomegaly"]
    assert entry["classes"] == ["No Finding", "Cardiomegaly"] and entry["seeds"] == [0]
    assert set(entry["summary"]) >= {"real", "real+synthetic", "rare_balanced_accuracy_gain"}
    assert "--target 30" in entry["command"] and "runs" not in entry  # aggregates, not per-run detail
    assert card[CARD_KEY]["all"] == {"kept": True}
    assert researcher_card(card)[CARD_KEY]["No Finding,Cardiomegaly"]["summary"] == entry["summary"]
