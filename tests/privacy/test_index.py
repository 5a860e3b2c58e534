"""PrivacyIndex: the search agrees with brute force, and the index survives a save/load."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import patient_images, smooth_base

import models.privacy.index as index_mod
from models.privacy import PrivacyIndex, build_privacy_index
from models.privacy.features import NO_SHIFT, SHIFTS, l2_normalise, pixel_features, shift_images


def random_index(rng, n=60, d=24, shifts=SHIFTS):
    """An index over smooth random images with a few images per patient, plus its source images."""
    bases = smooth_base(rng, n // 3)
    images = np.concatenate([patient_images(rng, b, 3) for b in bases])
    emb = rng.normal(size=(n, d)).astype(np.float32)
    idx = PrivacyIndex(
        pixels=pixel_features(images),
        embeddings=l2_normalise(emb),
        patient_ids=np.repeat([f"p{i}" for i in range(n // 3)], 3),
        shifts=shifts,
        source_images=images,
    )
    return idx, images, emb


def cdist(q, x):
    """All-pairs Euclidean distance in float64; a zero vector (flat image) is sqrt(2) from anything."""
    d = np.sqrt(((q[:, None, :].astype(np.float64) - x[None].astype(np.float64)) ** 2).sum(-1))
    empty = ((q**2).sum(1) < 0.5)[:, None] | ((x**2).sum(1) < 0.5)[None, :]
    return np.where(empty, np.sqrt(2.0), d)


def brute_force(index, pixels, emb):
    """Reference in float64 numpy: full distance matrices, min over shifts, min over spaces."""
    dp = np.full((len(pixels), len(index)), np.inf)
    for dy, dx in index.shifts:
        dp = np.minimum(dp, cdist(pixel_features(shift_images(pixels, dy, dx)), index.pixels))
    qe = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    de = cdist(qe, index.embeddings)
    score = np.minimum(dp / index.pixel_scale, de / index.embed_scale)
    return score, dp, de


@pytest.mark.parametrize("shifts", [SHIFTS, NO_SHIFT], ids=["shifts", "no-shift"])
@pytest.mark.parametrize("chunks", [(1024, 4096), (16, 25)], ids=["one-chunk", "many-chunks"])
def test_nearest_matches_brute_force(shifts, chunks, monkeypatch):
    monkeypatch.setattr(index_mod, "QUERY_CHUNK", chunks[0])
    monkeypatch.setattr(index_mod, "INDEX_CHUNK", chunks[1])
    rng = np.random.default_rng(1)
    index, images, emb = random_index(rng, shifts=shifts)
    # Queries: near-copies of some index images (small noise) and unrelated new images.
    near = np.clip(images[:12].astype(np.int16) + rng.integers(-6, 7, size=images[:12].shape), 0, 255).astype(np.uint8)
    fresh = np.concatenate([patient_images(rng, b, 1) for b in smooth_base(rng, 11)])
    flat = np.full((2, 128, 128), 90, np.uint8)  # no structure: pixel evidence of nothing
    q_px = np.concatenate([near, fresh, flat])
    q_emb = np.concatenate([emb[:12] + 0.3 * rng.normal(size=emb[:12].shape), rng.normal(size=(13, emb.shape[1]))])

    got = index.nearest(q_px, q_emb.astype(np.float32))
    score, dp, de = brute_force(index, q_px, q_emb)
    b = np.arange(len(q_px))
    np.testing.assert_allclose(got.score, score.min(1), rtol=1e-4, atol=1e-5)
    # The row returned achieves the minimum (and is the argmin unless two rows tie).
    np.testing.assert_allclose(score[b, got.index], score.min(1), rtol=1e-4, atol=1e-5)
    assert np.mean(got.index == score.argmin(1)) >= 0.95
    np.testing.assert_allclose(got.pixel_dist, dp[b, got.index], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.embed_dist, de[b, got.index], rtol=1e-4, atol=1e-5)


def test_flat_images_are_not_copies():
    """A flat image has no pixel structure: it must neither match everything as a query nor attract
    every query as a training row (a zero vector would otherwise sit at distance 1 from all)."""
    rng = np.random.default_rng(4)
    index, images, emb = random_index(rng, n=30)
    q = np.stack([np.full((128, 128), 200, np.uint8), images[5]])
    dp, _ = index.nearest_by_space(q, np.stack([emb[1], emb[5]]))
    assert dp[0] == pytest.approx(np.sqrt(2)) and dp[1] < 1e-3
    images[0] = 50  # a flat training image
    flat_index = PrivacyIndex(pixels=pixel_features(images), embeddings=l2_normalise(emb),
                              patient_ids=index.patient_ids, source_images=images)
    # Unrelated smooth images correlate a little with each other; the flat row must not beat that.
    fresh = np.concatenate([patient_images(rng, b, 1) for b in smooth_base(rng, 6)])
    dp, _ = flat_index.nearest_by_space(fresh, emb[:6])
    assert (dp < np.sqrt(2) - 0.05).all()  # a real neighbour won, not the flat row (which is sqrt 2)
    rows = np.zeros(6, np.int64)
    np.testing.assert_allclose(flat_index.pair_scores_pixels(fresh, rows) * flat_index.pixel_scale, np.sqrt(2), rtol=1e-6)


def test_self_search_respects_patients():
    rng = np.random.default_rng(2)
    index, images, _ = random_index(rng, n=30)
    diff = index.self_nearest("different", images)
    same = index.self_nearest("same", images)
    assert (index.patient_ids[diff.index] != index.patient_ids).all()
    assert (index.patient_ids[same.index] == index.patient_ids).all()
    assert (same.index != np.arange(len(index))).all()
    # Repeat images of one patient are much closer than the nearest stranger in this fixture.
    assert np.median(same.score) < np.median(diff.score)


def test_exact_copy_scores_zero(index, trainset, bundle):
    from models.privacy.features import classifier_embeddings

    rows = index.rows[[0, 17, 101]]
    px = trainset.images[rows]
    got = index.nearest(px, classifier_embeddings(bundle.classifier, px))
    assert list(got.index) == [0, 17, 101]
    assert np.all(got.pixel_dist < 1e-3) and np.all(got.score < 1e-3)


def test_save_load_round_trip(index, tmp_path):
    path = tmp_path / "privacy_index.npz"
    index.save(path)
    for loaded in (PrivacyIndex.load(path), PrivacyIndex.load(path.read_bytes())):
        np.testing.assert_array_equal(loaded.pixels, index.pixels)
        np.testing.assert_array_equal(loaded.embeddings, index.embeddings)
        np.testing.assert_array_equal(loaded.patient_ids, index.patient_ids)
        np.testing.assert_array_equal(loaded.image_ids, index.image_ids)
        np.testing.assert_array_equal(loaded.rows, index.rows)
        np.testing.assert_array_equal(loaded.sources, index.sources)
        assert loaded.shifts == index.shifts
        assert (loaded.pixel_scale, loaded.embed_scale) == (index.pixel_scale, index.embed_scale)
        assert loaded.meta == index.meta
    # No pickled objects: numpy can read it back with pickling off.
    with np.load(path, allow_pickle=False) as z:
        assert z["pixels"].dtype == np.float32


def test_build_index_contents(index, trainset, bundle):
    from models.privacy.index import classifier_digest

    assert len(index) == int((trainset.splits == "train").sum())
    np.testing.assert_allclose(np.linalg.norm(index.embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(index.pixels, axis=1), 1.0, atol=1e-5)
    assert index.meta["classifier_sha256"] == classifier_digest(bundle.classifier)
    assert index.meta["trainset_fingerprint"] == trainset.fingerprint
    with pytest.raises(ValueError, match="split"):
        build_privacy_index(bundle, trainset, split="nonexistent")
    whole = build_privacy_index(bundle, trainset.subset(np.arange(24)), split=None)  # a set without splits
    assert len(whole) == 24 and whole.meta["split"] is None


def test_query_shape_errors_name_shapes_only(index):
    px = np.zeros((2, 128, 128), np.uint8)
    with pytest.raises(ValueError, match=r"embeddings must be \[B,256\]"):
        index.nearest(px, np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        index.nearest(px.astype(np.float32), np.zeros((2, 256), np.float32))
