"""The default model the repository ships (models/checkpoints/default): what `make run` publishes and
the workers load. A user relies on it loading, being small, and carrying an honest card."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cli.hospital import SHIPPED_MAX_BYTES, default_checkpoint_dir  # noqa: E402
from models.bundle import load_bundle  # noqa: E402
from models.conditions import CONDITIONS  # noqa: E402
from models.faithfulness import MAX_EMPTY_SHARE  # noqa: E402
from service.modelversions.service import researcher_card  # noqa: E402

CKPT = default_checkpoint_dir()


def test_shipped_bundle_is_small_fp16_and_loads_without_unpickling():
    path = CKPT / "bundle.pt"
    assert path.stat().st_size <= SHIPPED_MAX_BYTES == 30 * 1024 * 1024
    payload = torch.load(path, map_location="cpu", weights_only=True)
    floats = [t for part in ("generator", "classifier", "discriminator") for t in (payload[part] or {}).values()
              if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float16 for t in floats)
    assert payload["conditions"] == list(CONDITIONS)


def test_shipped_generator_makes_distinct_128px_images_per_condition():
    b = load_bundle(CKPT / "bundle.pt")
    z = torch.randn(len(CONDITIONS), b.nz, generator=torch.Generator().manual_seed(0))
    images = b.generate(z, b.condition_vectors(list(CONDITIONS))).numpy()
    assert images.shape == (len(CONDITIONS), 1, 128, 128)
    assert np.isfinite(images).all() and images.min() >= -1 and images.max() <= 1
    # A trained generator: real contrast in each image, and different conditions give different images.
    assert (images.reshape(len(CONDITIONS), -1).std(axis=1) > 0.1).all()
    assert np.abs(images[0] - images[1]).mean() > 0.01


def test_card_json_is_the_bundles_card_with_licences_metrics_and_caveats():
    card = json.loads((CKPT / "card.json").read_text())
    assert card == json.loads(json.dumps(load_bundle(CKPT / "bundle.pt").card, default=str))
    assert "CC BY-NC-SA" in card["licences"]["synthetic_output_licence"]
    assert card["caveats"] and card["training_data"]["fingerprint"]
    fd = card["metrics"]["frechet"]["all_sources"]
    assert fd["floor"] > 0 and fd["fd"] > 0 and fd["n_synthetic"] > 0
    assert card["privacy"]["calibration"]["threshold"] > 0
    assert card["privacy"]["filter_on_generated"]["n_images"] >= 10_000


def test_rare_conditions_heatmaps_show_positive_evidence_where_plain_grad_cam_had_none():
    from models.gradcam import gradcam_batch

    b = load_bundle(CKPT / "bundle.pt")
    k = list(CONDITIONS).index("Cardiomegaly")
    z = torch.randn(16, b.nz, generator=torch.Generator().manual_seed(0))
    x = b.generate(z, b.condition_vectors(["Cardiomegaly"] * 16)).float()
    fmap = b.classifier.feature_map(x)
    plain = torch.einsum("k,bkhw->bhw", b.classifier.fc.weight[k], fmap).clamp(min=0)
    assert (plain.flatten(1).amax(1) == 0).float().mean() >= 0.9  # the shipped classifier never says yes here
    maps = gradcam_batch(b.classifier, x, k).heatmaps
    assert (maps.flatten(1).amax(1) > 0).all()  # relative to a blank image, every map has a region


def test_shipped_card_says_for_every_condition_whether_its_heatmaps_mean_anything():
    hm = json.loads((CKPT / "card.json").read_text())["heatmaps"]
    assert sorted(hm["conditions"]) == sorted(CONDITIONS)
    for c, v in hm["conditions"].items():
        syn = v["synthetic"]
        assert 0.0 <= syn["empty_share"] <= 1.0 and syn["n"] > 0
        # A condition is labelled informative only by the rule the card states, from its own figures.
        margin_clears_noise = syn.get("margin") is not None and syn["margin"] - 2 * syn["margin_se"] > 0
        assert v["informative"] == (syn["empty_share"] <= MAX_EMPTY_SHARE and margin_clears_noise), c
    assert sorted(hm["uninformative_conditions"]) == sorted(c for c, v in hm["conditions"].items() if not v["informative"])
    # All-empty heatmaps (no evidence anywhere) can never count as informative.
    assert {c for c, v in hm["conditions"].items() if v["synthetic"]["empty_share"] == 1.0} <= set(hm["uninformative_conditions"])


def test_researchers_see_which_conditions_heatmaps_are_uninformative_but_not_the_training_config():
    card = json.loads((CKPT / "card.json").read_text())
    public = researcher_card(card)
    assert public["heatmaps"]["uninformative_conditions"] == card["heatmaps"]["uninformative_conditions"]
    assert public["heatmaps"]["conditions"] == card["heatmaps"]["conditions"] and public["heatmaps"]["caveat"]
    assert "config" not in public and "training" not in public


def test_the_readme_tables_render_from_the_shipped_card_in_the_models_condition_order():
    from models.card_tables import headline, heatmap_table, seed_experiment_tables

    card = json.loads((CKPT / "card.json").read_text())
    assert all(v and "None" not in v for v in headline(card).values())
    rows = heatmap_table(card).splitlines()[2:]
    assert [r.split(" | ")[0].removeprefix("| ") for r in rows] == list(CONDITIONS)
    for key, entry in (card.get("augmentation_experiment") or {}).items():
        assert key in seed_experiment_tables(card) and all(c in seed_experiment_tables(card) for c in entry["classes"])


def test_the_shipped_bundle_carries_its_verifier_and_a_check_of_its_own_images():
    b = load_bundle(CKPT / "bundle.pt")
    assert b.verifier is not None and b.verifier["kind"] == b.card["privacy"]["reidentification"]["kind"]
    own = b.card["privacy"]["reidentification"]["filter_on_generated"]
    # measured for this generator, not inherited from the bundle it was continued from
    assert "not_measured" not in own and own["n_images"] >= 2000 and own["flagged_either"] <= 0.02
    control = own["dcr_control"]
    assert control["repeats"] >= 5 and control["n_synthetic"] == own["n_images"]
    assert set(b.card["augmentation_experiment"]) == {"seed", "all"}


def test_the_shipped_card_records_the_recipe_ablation_it_was_chosen_by_but_keeps_it_from_researchers():
    card = json.loads((CKPT / "card.json").read_text())
    ablation = card["training"]["recipe_ablation"]
    assert {"baseline (translation)", "full DiffAugment"} <= set(ablation["steps_600"]) and ablation["kept"]
    assert card["training"]["augment"] == "translation"  # the recipe the ablation kept is the one trained
    assert "training" not in researcher_card(card)
