"""Building a model version's privacy index from its bundle and training set (both checks' spaces)."""

from __future__ import annotations

import numpy as np

from models.privacy.features import PIXEL_SIZE, classifier_embeddings, l2_normalise, pixel_features
from models.privacy.index import PrivacyIndex, classifier_digest
from models.privacy.index_reid import reid_vectors


def build_privacy_index(bundle, trainset, split: str | None = "train", *, batch_size: int = 256,
                        scales: tuple[float, float] | None = None) -> PrivacyIndex:
    """Index every image of ``split`` in ``trainset`` (every image if ``split`` is None) with
    ``bundle.classifier``'s embeddings. ``scales`` (pixel, embedding) skips their self-search when a
    calibration of this very index already holds them."""
    n_all = len(trainset.images)
    rows = np.arange(n_all) if split is None else np.flatnonzero(np.asarray(trainset.splits).astype(str) == split)
    if len(rows) == 0:
        raise ValueError(f"training set has no images in split {split!r}")
    images = np.asarray(trainset.images)[rows]
    ids = getattr(trainset, "image_ids", None)
    image_ids = np.asarray(ids).astype(str)[rows] if ids is not None else np.array([f"row{r}" for r in rows])
    srcs = getattr(trainset, "sources", None)
    sources = np.asarray(srcs).astype(str)[rows] if srcs is not None else np.full(len(rows), "")
    patient_ids = np.asarray(trainset.patient_ids).astype(str)[rows]
    emb = classifier_embeddings(bundle.classifier, images, batch_size=batch_size)
    reid_kw = reid_vectors(getattr(bundle, "verifier", None), trainset, images, split, len(rows))
    meta = {
        "split": split,
        "n_images": int(len(rows)),
        "n_patients": int(len(np.unique(patient_ids))),
        "trainset_fingerprint": str(getattr(trainset, "fingerprint", "") or ""),
        "classifier_sha256": classifier_digest(bundle.classifier),
        "pixel_size": PIXEL_SIZE,
        "embed_dim": int(emb.shape[1]),
    }
    return PrivacyIndex(
        pixels=pixel_features(images),
        embeddings=l2_normalise(emb),
        patient_ids=patient_ids,
        image_ids=image_ids,
        rows=rows,
        sources=sources,
        meta={**meta, **({"reid_kind": reid_kw["reid_payload"]["kind"]} if reid_kw else {})},
        pixel_scale=None if scales is None else scales[0],
        embed_scale=None if scales is None else scales[1],
        source_images=images,
        **reid_kw,
    )
