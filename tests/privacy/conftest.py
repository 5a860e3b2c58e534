"""Fixtures for the privacy tests: small synthetic "patients" with known identity.

A patient is a smooth random base image (a chest-X-ray-sized blob field); each of their images is
the base plus a little noise, a small shift and a small brightness change - the way repeat images
of one person differ. Different patients have independent bases.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.conditions import CONDITIONS
from models.trainset import TrainSet

torch.set_num_threads(2)  # a shared 2-core box


def smooth_base(rng: np.random.Generator, n: int) -> np.ndarray:
    """n smooth random images, float [n,128,128] in ~[40, 215] (coarse noise, bilinear-upsampled)."""
    coarse = rng.normal(size=(n, 1, 9, 9)).astype(np.float32)
    up = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(128, 128), mode="bicubic", align_corners=True)
    up = up[:, 0].numpy()
    up = (up - up.mean(axis=(1, 2), keepdims=True)) / up.std(axis=(1, 2), keepdims=True)
    return 128.0 + 35.0 * up


def patient_images(rng: np.random.Generator, base: np.ndarray, k: int) -> np.ndarray:
    """k repeat images of one patient: shift by up to 2 px, brightness +-8, noise sigma 4."""
    out = []
    for _ in range(k):  # tiny fixture: a Python loop over a handful of images is fine
        dy, dx = rng.integers(-2, 3, size=2)
        img = np.roll(base, (int(dy), int(dx)), axis=(0, 1)) + rng.normal(0, 4, base.shape) + rng.uniform(-8, 8)
        out.append(img)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def make_trainset(n_patients: int = 40, per_patient: int = 4, seed: int = 0, splits=("train",)) -> TrainSet:
    """A TrainSet of synthetic patients; patient p goes to splits[p % len(splits)]."""
    rng = np.random.default_rng(seed)
    bases = smooth_base(rng, n_patients)
    images = np.concatenate([patient_images(rng, b, per_patient) for b in bases])
    n = len(images)
    pid = np.repeat([f"fx:{p}" for p in range(n_patients)], per_patient)
    split = np.repeat([splits[p % len(splits)] for p in range(n_patients)], per_patient)
    labels = np.zeros((n, len(CONDITIONS)), dtype=np.uint8)
    # Three conditions and two sources, assigned independently of the split (no confounding).
    group = np.arange(n_patients) // len(splits)
    labels[np.arange(n), np.repeat(group % 3, per_patient)] = 1
    sources = np.repeat(np.where((group // 3) % 2 == 0, "srcA", "srcB"), per_patient)
    return TrainSet(
        images=images,
        labels=labels,
        patient_ids=pid,
        splits=split,
        sources=sources,
        licenses=np.full(n, "CC BY 4.0"),
        conditions=list(CONDITIONS),
        fingerprint=f"fixture-{seed}",
        image_ids=np.array([f"img{i:05d}" for i in range(n)]),
    )


@pytest.fixture(scope="session")
def bundle():
    from models.bundle import untrained_bundle

    return untrained_bundle(seed=0)


@pytest.fixture(scope="session")
def trainset():
    return make_trainset()


@pytest.fixture(scope="session")
def index(bundle, trainset):
    from models.privacy import build_privacy_index

    return build_privacy_index(bundle, trainset)


@pytest.fixture(scope="session")
def calibration(index, trainset):
    from models.privacy import calibrate

    return calibrate(index, trainset)
