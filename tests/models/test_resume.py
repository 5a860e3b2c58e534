"""Training that can be stopped and continued: same weights as never stopping; a lost run folder
continues from a bundle's G and D."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.bundle import load_bundle
from models.cli import SHIPPED_BUNDLE, resolve_resume
from models.train import GanConfig, train_gan

from .tiny import TINY, write_tiny_trainset

# every recipe option on, so their state (LeCam averages, R1 cadence) must survive the stop too
FULL = {"augment": "translation,cutout,color", "lecam": 0.3, "r1": 0.1, "r1_every": 2}


@pytest.fixture
def tiny_trainset(tmp_path):
    return write_tiny_trainset(tmp_path / "ts")


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


def test_a_stopped_and_continued_run_ends_with_the_weights_of_an_uninterrupted_one(tiny_trainset, tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train_gan(GanConfig(trainset=str(tiny_trainset), out=str(straight), iters=5, **TINY, **FULL))
    train_gan(GanConfig(trainset=str(tiny_trainset), out=str(stopped), iters=3, **TINY, **FULL))
    # the continuation's command names no recipe: the run's own comes from its checkpoint
    s = train_gan(GanConfig(trainset=str(tiny_trainset), out=str(stopped), iters=5, **TINY))
    assert s["steps"] == 5
    a = torch.load(straight / "ckpt.pt", weights_only=True)
    b = torch.load(stopped / "ckpt.pt", weights_only=True)
    for k in ("G", "D", "G_ema"):
        assert _same(a[k], b[k]), k
    assert a["lecam_ema"] == pytest.approx(b["lecam_ema"])
    ma, mb = a["optD"]["state"], b["optD"]["state"]
    assert all(torch.allclose(ma[i]["exp_avg"], mb[i]["exp_avg"], atol=1e-6) for i in ma)
    assert json.loads(b["config"])["augment"] == FULL["augment"]


def test_a_run_without_its_folder_continues_from_a_bundles_generator_and_discriminator(tiny_trainset, tmp_path):
    first = tmp_path / "first"
    train_gan(GanConfig(trainset=str(tiny_trainset), out=str(first), iters=3, **TINY))
    bundle = load_bundle(first / "bundle.pt")
    new = tmp_path / "elsewhere"
    # architecture comes from the bundle, whatever the command's sizes
    s = train_gan(GanConfig(trainset=str(tiny_trainset), out=str(new), iters=4, init_from=str(first / "bundle.pt"),
                            **{**TINY, "ngf": 8, "ndf": 8}))
    assert load_bundle(new / "bundle.pt").config["ngf"] == 4
    assert s["steps"] == 4 and s["warm_start"]["bundle_step"] == 3  # one more step, counted from the bundle's
    assert s["s_per_iter"] == pytest.approx(s["wall_s"])  # speed of the step taken here, not of the bundle's
    hist = json.loads((new / "history.json").read_text())["history"]
    assert [h["step"] for h in hist] == [4]
    d_before = bundle.discriminator.state_dict()
    d_after = torch.load(new / "ckpt.pt", weights_only=True)["D"]
    assert d_before.keys() == d_after.keys()
    # one step from the bundle's weights moves them a little, not to a fresh initialisation
    w = "main.0.weight_orig" if "main.0.weight_orig" in d_after else next(k for k in d_after if k.endswith("weight"))
    diff = (d_after[w].float() - d_before[w].float()).abs().max().item()
    fresh = torch.load(first / "ckpt.pt", weights_only=True)  # same size, trained from its own init
    assert 0 < diff < (fresh["D"][w].float().abs().max().item())


def test_resume_names_a_run_folder_a_bundle_or_a_lost_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "ckpt.pt").write_bytes(b"x")
    assert resolve_resume(run, None) == (run, None)  # continue that run, in place
    packaged = tmp_path / "pkg"
    packaged.mkdir()
    (packaged / "bundle.pt").write_bytes(b"x")
    assert resolve_resume(packaged, None) == (packaged, str(packaged / "bundle.pt"))
    gone = tmp_path / "gone"
    assert resolve_resume(gone, None) == (gone, str(SHIPPED_BUNDLE))  # a new machine: the shipped default
    assert Path(SHIPPED_BUNDLE).exists()
    assert resolve_resume(None, None) == (Path("runs/gan"), None)


def test_dp_with_lecam_or_r1_is_refused_before_anything_is_written(tiny_trainset, tmp_path):
    with pytest.raises(ValueError, match="not available with --dp"):
        train_gan(GanConfig(trainset=str(tiny_trainset), out=str(tmp_path / "dp"), iters=2, dp=True, r1=0.1, **TINY))
    assert not (tmp_path / "dp").exists()


def test_a_continued_bundle_keeps_its_parents_verifier_and_asks_for_its_own_images_to_be_checked(tiny_trainset, tmp_path):
    from models.bundle import save_bundle
    from models.privacy.reid import NCCSpace, bundle_verifier

    first = tmp_path / "first"
    train_gan(GanConfig(trainset=str(tiny_trainset), out=str(first), iters=2, **TINY))
    b = load_bundle(first / "bundle.pt")
    heldout = {"source_matched_auc": 0.7, "loo_catch_rate_crossfit": 0.002}
    card = {**b.card, "privacy": {"reidentification": {
        "shipped": "registered NCC", "verifier_heldout": heldout, "does_not_protect_against": "Re-identification check: weak",
        "filter_on_generated": {"flagged_either": 0.0035}, "targets_met": {"source_matched_auc": False, "generated_flagged": True}}}}
    parent = save_bundle(tmp_path / "parent.pt", generator=b.generator, classifier=b.classifier, discriminator=b.discriminator,
                         conditions=b.conditions, config=b.config, card=card, verifier=bundle_verifier(NCCSpace()))

    train_gan(GanConfig(trainset=str(tiny_trainset), out=str(tmp_path / "next"), iters=3, init_from=str(parent), **TINY))
    child = load_bundle(tmp_path / "next" / "bundle.pt")
    assert child.verifier is not None and child.verifier["kind"] == "ncc"
    reid = child.card["privacy"]["reidentification"]
    # the verifier's figures on real patients still hold; the parent's check of its own images does not
    assert reid["verifier_heldout"] == heldout
    assert "not_measured" in reid["filter_on_generated"] and reid["targets_met"]["generated_flagged"] is None
    assert "Re-identification check: weak" in child.card["caveats"]
