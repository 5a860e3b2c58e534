"""A 40-image random training set and a tiny GAN size, for training tests that run in seconds."""

from __future__ import annotations

import numpy as np

from models.conditions import CONDITIONS
from models.trainset import write_trainset

TINY = {"nz": 16, "ngf": 4, "ndf": 4, "emb_dim": 8, "batch_size": 8, "eval_every": 2, "ckpt_every": 2,
        "n_eval": 8, "bn_calib": 16, "progress": False, "threads": 2}


def write_tiny_trainset(root, n: int = 40):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 128, 128), dtype=np.uint8)
    labels = np.zeros((n, len(CONDITIONS)), np.uint8)
    labels[np.arange(n), rng.integers(0, 4, n)] = 1
    labels[0, 8] = 1  # one multi-label image with a rare class
    n_train, n_val = int(n * 0.7), int(n * 0.15)
    splits = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val))
    meta = [{"image_id": f"i{i}", "patient_id": f"p{i // 2}", "split": s, "source": "nih" if i % 2 else "kermany",
             "license": "CC BY 4.0", "view": "PA"} for i, s in enumerate(splits)]
    write_trainset(root, images, labels, meta)
    return root
