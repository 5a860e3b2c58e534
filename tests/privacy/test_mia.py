"""Membership inference: AUCs are sane, ~0.5 for a generator that saw neither group."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_trainset

from models.privacy import membership_inference, roc_auc
from models.privacy.mia import matched_members


def test_roc_auc_rank_based():
    assert roc_auc([3, 4, 5], [0, 1, 2]) == 1.0
    assert roc_auc([0, 1], [2, 3]) == 0.0
    assert roc_auc([1, 1], [1, 1]) == 0.5  # ties count half
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(0.5, 1, 40), rng.normal(0, 1, 50)
    brute = np.mean((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None]))
    assert roc_auc(pos, neg) == pytest.approx(brute)


@pytest.fixture(scope="module")
def split_trainset():
    # Patients cycle through train/val/test with the same image distribution in each.
    return make_trainset(n_patients=90, per_patient=2, seed=3, splits=("train", "val", "test"))


def test_members_and_nonmembers_are_matched(split_trainset):
    mem, non, info = matched_members(split_trainset, n=1000)
    assert len(mem) == len(non) > 0
    assert set(split_trainset.splits[mem]) == {"train"} and set(split_trainset.splits[non]) <= {"val", "test"}
    key = lambda rows: sorted(f"{s}|{l.tobytes().hex()}" for s, l in zip(split_trainset.sources[rows], split_trainset.labels[rows]))  # noqa: E731
    assert key(mem) == key(non)  # identical (source, labels) mix on both sides
    assert info["n_nonmembers_unmatched"] >= 0
    again = matched_members(split_trainset, n=1000)  # deterministic for a seed
    np.testing.assert_array_equal(again[0], mem) and np.testing.assert_array_equal(again[1], non)


def test_membership_inference_is_chance_for_an_unrelated_generator(bundle, split_trainset):
    out = membership_inference(bundle, split_trainset, n=200, n_generated=120, seed=0)
    assert out["n_members"] == out["n_nonmembers"] == 60
    for name in ("distance", "distance_pixel", "distance_embedding", "discriminator"):
        a = out["attacks"][name]
        assert 0.0 <= a["auc"] <= 1.0
        assert abs(a["auc"] - 0.5) < 0.15, (name, a["auc"])
        assert a["auc_se"] > 0


def test_discriminator_attack_skipped_with_reason(bundle, split_trainset):
    from dataclasses import replace

    out = membership_inference(replace(bundle, discriminator=None), split_trainset, n=30, n_generated=40)
    assert "skipped" in out["attacks"]["discriminator"]
    assert "auc" in out["attacks"]["distance"]
