"""The memorisation filter: planted training images are caught and replaced, deterministically."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import patient_images, smooth_base

from models.privacy import MemorisationError, filter_and_replace, memorisation_filter
from models.privacy.features import classifier_embeddings, shift_images


def fresh_image(image_index: int, attempt: int) -> np.ndarray:
    """A new 'patient' (never in the training set) that depends on (index, attempt) only."""
    rng = np.random.default_rng([12345, image_index, attempt])
    return patient_images(rng, smooth_base(rng, 1)[0], 1)[0]


def planted_copies(trainset, index):
    """Image index -> a training image dressed up as generated output (and which row it came from)."""
    rows = index.rows[[3, 50, 90, 130]]
    imgs = trainset.images[rows]
    brighter = np.clip(np.round(imgs.astype(np.float32) * 1.05 + 6), 0, 255).astype(np.uint8)
    return {
        2: (imgs[0], rows[0]),  # exact copy
        5: (brighter[1], rows[1]),  # brightness/contrast changed
        6: (shift_images(imgs[2:3], 0, 1)[0], rows[2]),  # shifted by 1 px
        9: (shift_images(brighter[3:4], 1, 1)[0], rows[3]),  # brighter and shifted diagonally
    }


def make_generate_fn(bundle, plants, calls=None):
    """generate_fn(indices, attempts): fresh images, except planted copies at attempt 0."""

    def generate_fn(indices, attempts):
        if calls is not None:
            calls.append((indices.copy(), attempts.copy()))
        px = np.stack([
            plants[i][0] if (i in plants and a == 0) else fresh_image(i, a) for i, a in zip(indices, attempts)
        ])
        emb = classifier_embeddings(bundle.classifier, px)
        extra = {"tag": indices * 100 + attempts, "heat": torch.from_numpy(px[:, ::4, ::4].astype(np.float32))}
        return px, emb, extra

    return generate_fn


def test_filter_flags_planted_copies(bundle, trainset, index, calibration):
    plants = planted_copies(trainset, index)
    ids = np.arange(12)
    px, emb, _ = make_generate_fn(bundle, plants)(ids, np.zeros(12, np.int64))
    res = memorisation_filter(index, calibration, px, emb)
    planted = np.array(sorted(plants))
    assert not res.keep[planted].any(), res.score[planted]
    assert res.keep[np.setdiff1d(ids, planted)].all()
    # The filter points at the training image (and patient) that was copied.
    src_rows = np.array([plants[i][1] for i in planted])
    np.testing.assert_array_equal(index.rows[res.nearest_index[planted]], src_rows)
    np.testing.assert_array_equal(res.nearest_patient[planted], trainset.patient_ids[src_rows])


def test_planted_copies_are_replaced_deterministically(bundle, trainset, index, calibration):
    plants = planted_copies(trainset, index)
    ids = np.arange(100, 112)
    plants = {100 + k: v for k, v in plants.items()}
    calls = []
    first = filter_and_replace(make_generate_fn(bundle, plants, calls), index, calibration, ids)
    second = filter_and_replace(make_generate_fn(bundle, plants), index, calibration, ids)

    planted = np.isin(ids, list(plants))
    np.testing.assert_array_equal(first.attempts, planted.astype(np.int64))  # one retry each
    assert first.n_rejected == 4 and first.n_generated == 16
    assert len(calls) == 2 and list(calls[1][0]) == sorted(plants) and list(calls[1][1]) == [1, 1, 1, 1]
    assert (first.score >= calibration.threshold).all()
    for i, (img, _) in plants.items():
        assert not np.array_equal(first.pixels[ids == i][0], img)
    np.testing.assert_array_equal(first.pixels[planted], np.stack([fresh_image(i, 1) for i in ids[planted]]))
    # extra comes from the accepted attempt, in image order, and tensors stay tensors.
    np.testing.assert_array_equal(first.extra["tag"], ids * 100 + first.attempts)
    assert isinstance(first.extra["heat"], torch.Tensor)
    torch.testing.assert_close(first.extra["heat"], torch.from_numpy(first.pixels[:, ::4, ::4].astype(np.float32)))
    assert len(first.rejected_scores) == 4 and (first.rejected_scores < calibration.threshold).all()

    # Same inputs, same outputs: byte-identical pixels, attempts, scores and neighbours.
    np.testing.assert_array_equal(first.pixels, second.pixels)
    np.testing.assert_array_equal(first.attempts, second.attempts)
    np.testing.assert_array_equal(first.score, second.score)
    np.testing.assert_array_equal(first.nearest_index, second.nearest_index)


def test_persistent_copy_fails_with_a_reason_and_no_pixels(bundle, trainset, index, calibration):
    copy = trainset.images[index.rows[7]]

    def always_copies(indices, attempts):
        px = np.stack([copy if i == 3 else fresh_image(i, a) for i, a in zip(indices, attempts)])
        return px, classifier_embeddings(bundle.classifier, px), None

    with pytest.raises(MemorisationError) as err:
        filter_and_replace(always_copies, index, calibration, np.arange(5), max_attempts=3)
    assert err.value.image_indices == [3]
    assert "after 3 attempts" in str(err.value) and "image index 3" in str(err.value)
    # Only indices and scores in the message: no training image id, no pixel values.
    assert index.image_ids[7] not in str(err.value) and err.value.nearest_image_ids == [index.image_ids[7]]


def test_worker_style_generate_fn_with_the_bundle(bundle, trainset, index, calibration):
    """The worker's shape of generate_fn: latents from (seed, index, attempt), Grad-CAM embeddings."""
    from models.gradcam import gradcam_batch
    from models.imaging import from_uint8, to_uint8
    from models.latents import latent_batch

    copy_row = index.rows[11]

    def generate_fn(indices, attempts):
        z = latent_batch(7, indices, attempts, bundle.nz)
        y = bundle.condition_vectors(["Effusion"] * len(indices))
        px = to_uint8(bundle.generate(z, y))
        px[(indices == 4) & (attempts == 0)] = trainset.images[copy_row]  # a memorised sample
        cam = gradcam_batch(bundle.classifier, from_uint8(px), torch.full((len(px),), 5))
        return px, cam.embeddings, {"heatmaps": cam.heatmaps, "probs": cam.probs}

    a = filter_and_replace(generate_fn, index, calibration, np.arange(8))
    b = filter_and_replace(generate_fn, index, calibration, np.arange(8))
    np.testing.assert_array_equal(a.attempts, [0, 0, 0, 0, 1, 0, 0, 0])
    assert a.n_rejected == 1
    assert not any(np.array_equal(p, trainset.images[copy_row]) for p in a.pixels)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert a.extra["heatmaps"].shape == (8, 32, 32)
