"""Heatmap faithfulness: deleting where the map points must matter more than deleting elsewhere."""

from __future__ import annotations

import numpy as np
import torch

from models.classifier_train import fit_classifier
from models.faithfulness import card_section, deletion_test, with_heatmap_faithfulness


def _squares(n: int, rng, positive: bool) -> np.ndarray:
    # 64 px keeps the toy classifier's training to seconds on a shared CPU (its Grad-CAM map: 4 x 4)
    x = rng.integers(20, 60, (n, 64, 64)).astype(np.uint8)
    if positive:
        for im in x:
            r, c = rng.integers(4, 44, 2)
            im[r : r + 16, c : c + 16] = 230
    return x


def test_a_classifier_that_looks_at_a_bright_square_loses_it_when_its_hottest_pixels_go():
    rng = np.random.default_rng(0)
    x = np.concatenate([_squares(96, rng, True), _squares(96, rng, False)])
    y = np.zeros((192, 2), np.float32)
    y[:96, 0] = 1
    y[96:, 1] = 1
    model, _ = fit_classifier(x, y, width=4, max_steps=80, batch_size=16, lr=3e-3, seed=0, progress=False,
                              device=torch.device("cpu"), shift=0)
    test = torch.from_numpy(_squares(32, rng, True)).float()[:, None] / 127.5 - 1
    r = deletion_test(model.eval(), test, 0, seed=0)
    assert r["n"] == 32 and r["n_tested"] + round(r["empty_share"] * 32) == 32
    assert r["mean_prob"] > 0.8  # it learnt the square
    assert r["drop_hot"] > r["drop_random"] and r["margin"] > 0 and r["share_hot_drops_more"] > 0.5


def test_conditions_with_empty_or_unfaithful_heatmaps_are_labelled_uninformative():
    good = {"empty_share": 0.0, "margin": 0.2, "n": 10, "n_tested": 10}
    empty = {"empty_share": 0.5, "margin": 0.3, "n": 10, "n_tested": 5}
    unfaithful = {"empty_share": 0.0, "margin": 0.01, "margin_se": 0.02, "n": 10, "n_tested": 10}  # within noise
    res = {"heatmap_resolution": [8, 8], "split": "test",
           "conditions": {"Mass": {"real": good, "synthetic": good}, "Hernia": {"real": None, "synthetic": empty},
                          "Nodule": {"real": good, "synthetic": unfaithful}}}
    card = card_section(res)
    assert card["uninformative_conditions"] == ["Hernia", "Nodule"]
    assert card["conditions"]["Mass"]["informative"] is True
    model_card = with_heatmap_faithfulness({"name": "m"}, card)
    assert model_card["heatmaps"]["uninformative_conditions"] == ["Hernia", "Nodule"] and model_card["name"] == "m"
