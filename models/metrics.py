"""Distribution and ranking statistics that training (val selection) and evaluation both use.

scipy is imported inside the functions: the privacy package imports this module, and the CLI
(`xraysynth --help`, the API image) must start without scipy or torch."""

from __future__ import annotations

import numpy as np


def frechet_distance(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N,D], [M,D] (FID's formula)."""
    from scipy import linalg

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    d = a.shape[1]
    s1 = np.atleast_2d(np.cov(a, rowvar=False)) if len(a) > 1 else np.zeros((d, d))
    s2 = np.atleast_2d(np.cov(b, rowvar=False)) if len(b) > 1 else np.zeros((d, d))
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # singular product (few samples): regularise, as pytorch-fid does
        off = np.eye(d) * eps
        covmean = linalg.sqrtm((s1 + off) @ (s2 + off))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean), 0.0))


def roc_auc(y_true, scores) -> float | None:
    """ROC AUC via the rank statistic (ties averaged); None if only one class is present."""
    from scipy.stats import rankdata

    y = np.asarray(y_true).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    r = rankdata(np.asarray(scores, dtype=np.float64))
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def two_sample_auc(pos, neg) -> float:
    """P(a positive's statistic > a negative's), ties counted half (``roc_auc`` on the two samples);
    NaN when either sample is empty."""
    pos, neg = np.asarray(pos, dtype=np.float64).reshape(-1), np.asarray(neg, dtype=np.float64).reshape(-1)
    auc = roc_auc(np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)], np.r_[pos, neg])
    return float("nan") if auc is None else auc
