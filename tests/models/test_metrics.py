"""Evaluation metrics on toy inputs whose right answer is known."""

from __future__ import annotations

import numpy as np

from models.evaluate import frechet_distance, precision_recall_coverage, recall_at, roc_auc


def test_frechet_identical_is_zero_and_disjoint_is_large():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 8))
    assert frechet_distance(a, a) < 1e-6
    b = rng.normal(size=(500, 8))
    near = frechet_distance(a, b)
    far = frechet_distance(a, b + 10.0)
    assert near < 0.5
    assert abs(far - 800.0) < 40  # mean shift 10 in 8 dims: |mu1-mu2|^2 = 800
    # covariance-only difference is seen too
    assert frechet_distance(a, b * 3.0) > 20


def test_frechet_with_fewer_samples_than_dimensions_is_finite():
    rng = np.random.default_rng(1)
    assert np.isfinite(frechet_distance(rng.normal(size=(4, 32)), rng.normal(size=(6, 32))))


def test_precision_recall_coverage_identical_and_disjoint():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 16))
    same = precision_recall_coverage(a, a.copy())
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    far = precision_recall_coverage(a, rng.normal(size=(300, 16)) + 50.0)
    assert far["precision"] < 0.01 and far["recall"] < 0.01 and far["coverage"] < 0.01
    # a generator covering only half the data: precision stays high, recall drops
    b = rng.normal(size=(600, 2))
    half = precision_recall_coverage(b, b[b[:, 0] > 0])
    assert half["precision"] == 1.0 and half["recall"] < 0.7


def test_auc_and_recall():
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert roc_auc(y, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert roc_auc(np.array([1, 1]), np.array([0.1, 0.2])) is None
    labels = np.array([[1, 0], [1, 0], [0, 1]])
    probs = np.array([[0.9, 0.1], [0.2, 0.1], [0.1, 0.7]])
    r = recall_at(labels, probs, ["a", "b"])
    assert r == {"a": 0.5, "b": 1.0}
