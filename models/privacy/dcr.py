"""The DCR share beside a real-data control: how far "closer to training than to new patients" goes
without any memorisation.

The plain DCR share (``index.dcr_share``) is read against 50 %, but real images of new patients do
not give exactly 50 % either: the held-out and training sets differ in size and mix. The control
measures it. Held-out (val + test) patients are split in halves A and B, patient-level; a training
subset as large as B is drawn; the share of A's images whose nearest verifier neighbour lies in the
training subset rather than in B is what a generator that memorised nobody would score (A's patients
were never trained on). The generated images are scored with the same subset and the same B, so
their difference from the control, per repeat, is the memorisation signal. Sizes are half the plain
share's, so each repeat is noisier; the spread over repeats is reported.
"""

from __future__ import annotations

import numpy as np


def dcr_with_control(index, trainset, pixels_uint8, *, repeats: int = 5, seed: int = 0) -> dict | None:
    """Control and generated DCR shares over ``repeats`` patient-level halvings of the held-out set."""
    # lazy: loaded on first use, so importing models.privacy stays torch-free
    from models.privacy.reid_eval import nearest

    if not index.has_reid or index.holdout_reid is None or len(pixels_uint8) == 0:
        return None
    fingerprint = index.meta.get("trainset_fingerprint")
    if fingerprint and fingerprint != trainset.fingerprint:
        raise ValueError("the privacy index was built from another training set")
    splits = np.asarray(trainset.splits).astype(str)
    held_patients = np.asarray(trainset.patient_ids).astype(str)[np.isin(splits, ["val", "test"])]
    if len(held_patients) != len(index.holdout_reid):
        raise ValueError(f"{len(held_patients)} held-out images in the training set, {len(index.holdout_reid)} in the index")
    synthetic = index.reid_space.query(np.asarray(pixels_uint8))
    patients = np.unique(held_patients)
    real, generated = [], []
    for r in range(repeats):
        rng = np.random.default_rng(seed + r)
        in_a = np.isin(held_patients, rng.choice(patients, len(patients) // 2, replace=False))
        b_side = index.holdout_reid[~in_a]
        rows = rng.choice(len(index.reid), size=min(len(b_side), len(index.reid)), replace=False)
        for queries, out in ((index.holdout_reid[in_a][None], real), (synthetic, generated)):
            d_train, _ = nearest(queries, index.reid[rows])
            d_held, _ = nearest(queries, b_side)
            out.append(float(np.mean(d_train < d_held)))
    diff = np.asarray(generated) - np.asarray(real)
    return {
        "real_new_patients": float(np.mean(real)), "synthetic": float(np.mean(generated)),
        "difference": float(diff.mean()), "difference_sd": float(diff.std(ddof=1)) if repeats > 1 else None,
        "per_repeat": {"real_new_patients": real, "synthetic": generated},
        "repeats": int(repeats), "n_synthetic": int(len(pixels_uint8)), "n_heldout_images": int(len(held_patients)),
        "protocol": "held-out patients halved (A, B); share of A (control) and of the synthetic images closer to a "
                    "training subset of |B| images than to B, verifier space; difference > 0 = closer to training "
                    "patients than new patients are",
    }
