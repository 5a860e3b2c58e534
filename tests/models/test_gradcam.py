"""Grad-CAM: shapes, autocast, inference mode, and that it points at a planted signal."""

from __future__ import annotations

import numpy as np
import torch

from models.gradcam import blank_feature_maps, gradcam_batch
from models.networks import Classifier
from models.train import fit_classifier


def _planted(n: int, rng):
    """Noise images with up to two planted signals at random, known quadrants (0 TL, 1 TR, 2 BL, 3 BR).

    Class 0 = a bright blob, class 1 = a dark square; each present with p = 0.6, never in the same
    quadrant. Returns images, labels [n,2] and the quadrant of each signal (-1 when absent).
    """
    yy, xx = np.mgrid[0:128, 0:128]
    imgs = rng.normal(110, 20, (n, 128, 128))
    labels = (rng.random((n, 2)) < 0.6).astype(np.uint8)
    quads = np.full((n, 2), -1)
    for i in range(n):  # fixture construction, not a hot path
        qa, qb = rng.permutation(4)[:2]
        if labels[i, 0]:
            cy, cx = (qa // 2) * 64 + rng.integers(16, 48), (qa % 2) * 64 + rng.integers(16, 48)
            imgs[i] += 130 * np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 6.0**2)))
            quads[i, 0] = qa
        if labels[i, 1]:
            cy, cx = (qb // 2) * 64 + rng.integers(12, 40), (qb % 2) * 64 + rng.integers(12, 40)
            imgs[i, cy : cy + 12, cx : cx + 12] -= 90
            quads[i, 1] = qb
    return np.clip(imgs, 0, 255).astype(np.uint8), labels, quads


def test_shapes_ranges_and_inference_mode():
    clf = Classifier(5, 8).eval().requires_grad_(False)
    x = torch.rand(6, 1, 128, 128) * 2 - 1
    with torch.inference_mode():
        r = gradcam_batch(clf, x, torch.tensor([0, 1, 2, 3, 4, 0]), out_size=32)
    assert r.heatmaps.shape == (6, 32, 32) and r.heatmaps.dtype == torch.float32
    assert r.heatmaps.min() >= 0 and r.heatmaps.max() <= 1
    assert r.probs.shape == (6,) and ((r.probs > 0) & (r.probs < 1)).all()
    assert r.embeddings.shape == (6, clf.embed_dim)
    assert torch.allclose(r.embeddings, clf.embed(x), atol=1e-5)
    r16 = gradcam_batch(clf, x, 2, out_size=16)  # scalar class for the whole batch
    assert r16.heatmaps.shape == (6, 16, 16)


def test_bf16_autocast():
    clf = Classifier(5, 8).eval()
    x = torch.rand(4, 1, 128, 128) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r = gradcam_batch(clf, x, torch.tensor([1, 1, 2, 2]))
    assert r.heatmaps.dtype == torch.float32 and torch.isfinite(r.heatmaps).all()
    assert r.probs.dtype == torch.float32


def test_heatmap_peak_is_in_the_planted_quadrant():
    imgs, labels, _ = _planted(512, np.random.default_rng(0))
    clf, _ = fit_classifier(imgs, labels, width=8, max_steps=100, batch_size=32, lr=3e-3, shift=0,
                            balance="none", device=torch.device("cpu"), progress=False)
    test_imgs, test_labels, quads = _planted(96, np.random.default_rng(1))
    x = torch.from_numpy(test_imgs).float()[:, None] / 127.5 - 1
    for k in (0, 1):  # each class's heatmap must point at its own signal, not the other one
        rows = np.flatnonzero(test_labels[:, k] == 1)
        r = gradcam_batch(clf, x[rows], torch.full((len(rows),), k), out_size=32)
        # the quadrant holding most of the heatmap, and the one holding its single hottest cell
        mass = r.heatmaps.reshape(len(rows), 2, 16, 2, 16).sum(dim=(2, 4)).reshape(len(rows), 4).argmax(1).numpy()
        peak = r.heatmaps.flatten(1).argmax(1).numpy()
        peak = (peak // 32 // 16) * 2 + (peak % 32 // 16)
        assert (mass == quads[rows, k]).mean() >= 0.9, (k, (mass == quads[rows, k]).mean())
        assert (peak == quads[rows, k]).mean() >= 0.75, (k, (peak == quads[rows, k]).mean())
        assert (r.probs.numpy() > 0.5).mean() >= 0.85  # and the classifier actually learnt the task



def test_blank_baseline_matches_uniform_images_and_the_map_adds_up_to_the_logit_over_blank():
    torch.manual_seed(0)
    clf = Classifier(3, 8).eval().requires_grad_(False)
    grey = torch.tensor([-0.9, -0.31, 0.0, 0.27, 0.8])
    exact = clf.feature_map(grey[:, None, None, None].expand(-1, 1, 128, 128))
    assert (blank_feature_maps(clf, grey) - exact).abs().max() <= 0.02 * exact.abs().max()
    # Completeness for this GAP + linear head: the relative map's cells (before ReLU and scaling) sum
    # to logit(image) - logit(blank image of the same mean grey).
    x = torch.rand(4, 1, 128, 128) * 2 - 1
    fmap, mean = clf.feature_map(x), x.mean(dim=(1, 2, 3))
    cells = torch.einsum("k,bkhw->bhw", clf.fc.weight[0], fmap - blank_feature_maps(clf, mean)) / fmap[0, 0].numel()
    blank = mean[:, None, None, None].expand_as(x)
    assert torch.allclose(cells.sum((1, 2)), clf(x)[:, 0] - clf(blank)[:, 0], atol=0.02 * float(cells.abs().sum((1, 2)).max()))
