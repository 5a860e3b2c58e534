"""The model's own images, made as a worker makes them, for the privacy figures (hospital zone).

``balanced_generate_fn`` generates n / C images per condition in contiguous blocks (as in a dataset)
with the worker's latents, ``latent_batch(seed, i, attempt)``; ``generated_check`` runs them through
both checks of the filter at their first attempt and gives the flags per check and the DCR share
beside its real-data control. The privacy report and reid_ship both report these figures.
"""

from __future__ import annotations

import numpy as np


def _generate_fn(bundle, seed: int, labels_for):
    """The worker's generate_fn shape: (indices, attempts) -> (uint8 pixels, embeddings, None)."""
    import torch

    # lazy: loaded on first use, so importing models.privacy stays torch-free
    from models.imaging import to_uint8
    from models.latents import latent_batch
    from models.privacy.features import classifier_embeddings

    def generate_fn(indices, attempts):
        z = torch.from_numpy(latent_batch(seed, indices, attempts, bundle.nz)).to(bundle.device)
        y = torch.from_numpy(labels_for(indices)).to(bundle.device)
        with torch.inference_mode():
            px = to_uint8(bundle.generator(z, y))
        return px, classifier_embeddings(bundle.classifier, px), None

    return generate_fn


def balanced_conditions(n: int, n_cond: int) -> np.ndarray:
    """Condition of each of ``n`` images in contiguous blocks of n / C each, as in a dataset."""
    return np.arange(n) * n_cond // n


def balanced_generate_fn(bundle, seed: int, n: int):
    """``_generate_fn`` for the images of ``balanced_conditions``."""
    n_cond = len(bundle.conditions)
    cond_of = balanced_conditions(n, n_cond)

    def labels_for(indices):
        y = np.zeros((len(indices), n_cond), dtype=np.float32)
        y[np.arange(len(indices)), cond_of[indices]] = 1.0
        return y

    return _generate_fn(bundle, seed, labels_for)


def generated_check(bundle, index, cal, n: int, seed: int = 0, trainset=None) -> dict:
    """The bundle's own images (n / C per condition, first attempt, as a worker makes them); with the
    training set, the DCR share also beside its real-data control (models.privacy.dcr)."""
    # lazy: loaded on first use, so importing models.privacy stays torch-free
    from models.privacy.dcr import dcr_with_control
    from models.privacy.filter import COPY, REID, memorisation_filter

    cond_of = balanced_conditions(n, len(bundle.conditions))
    gen = balanced_generate_fn(bundle, seed, n)
    checks, pixels = [], []
    for s in range(0, n, 500):
        idx = np.arange(s, min(s + 500, n))
        px, emb, _ = gen(idx, np.zeros(len(idx), np.int64))
        checks.append(memorisation_filter(index, cal, px, emb).check)
        pixels.append(px)
    check = np.concatenate(checks)
    px = np.concatenate(pixels)
    return {"n_images": int(n), "seed": int(seed), "flagged_copy": float(np.mean(check == COPY)),
            "flagged_reidentification": float(np.mean(check == REID)),
            "flagged_either": float(np.mean(check != "")), "dcr": index.dcr_share(px),
            "dcr_control": None if trainset is None else dcr_with_control(index, trainset, px, seed=seed),
            "per_condition_reidentification": {c: float(np.mean(check[cond_of == k] == REID)) for k, c in enumerate(bundle.conditions)}}
