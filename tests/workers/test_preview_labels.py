"""The released preview grid's band labels: a researcher looking at a condition whose heatmaps the
model card measured as uninformative is told so, instead of seeing them as if they meant something."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from service.datasets.card import uninformative_heatmaps
from workers.preview import band_label, render_preview

# A model card whose measurement found uninformative conditions (the shipped default under plain Grad-CAM).
MEASURED = Path(__file__).resolve().parents[1] / "fixtures" / "plain_gradcam_heatmaps.json"


def shipped_card() -> dict:
    return {"name": "plain-grad-cam", "heatmaps": json.loads(MEASURED.read_text())}


def test_a_condition_with_all_heatmaps_empty_is_labelled_uninformative_with_why():
    why = uninformative_heatmaps(shipped_card())
    assert band_label("Cardiomegaly", 66, why) == (
        "Cardiomegaly  (66 images; heatmaps uninformative for this condition: the classifier finds no evidence)")


def test_every_condition_the_card_measured_uninformative_is_labelled_and_the_informative_ones_are_not():
    card = shipped_card()
    why = uninformative_heatmaps(card)
    assert set(why) == set(card["heatmaps"]["uninformative_conditions"])
    assert "45% of them are empty" in why["Atelectasis"]  # its margin clears noise; the empty maps do not
    assert "no more than a random one" in why["Edema"]  # never empty, but deleting its region does not matter
    for c in ("No Finding", "Effusion", "Pneumonia", "COVID-19"):
        assert band_label(c, 3, why) == f"{c}  (3 images; heatmap below each)"


def test_a_model_card_without_the_measurement_keeps_the_plain_label():
    assert uninformative_heatmaps({"name": "older"}) == {} and uninformative_heatmaps(None) == {}
    assert band_label("Mass", 5, uninformative_heatmaps({"name": "older"})) == "Mass  (5 images; heatmap below each)"


def _frag(n: int) -> dict:
    rng = np.random.default_rng(0)
    return {"preview_index": np.arange(n), "preview_pixels": rng.integers(0, 255, (n, 128, 128), dtype=np.uint8),
            "preview_heatmaps": rng.integers(0, 255, (n, 32, 32), dtype=np.uint8)}


def test_the_rendered_preview_is_wide_enough_for_the_caveat_and_draws_it():
    blocks = [("Cardiomegaly", 2), ("Effusion", 2)]
    frag = _frag(4)
    why = uninformative_heatmaps(shipped_card())
    plain = np.asarray(Image.open(io.BytesIO(render_preview(blocks, frag))))
    labelled = np.asarray(Image.open(io.BytesIO(render_preview(blocks, frag, uninformative=why))))
    # two 128 px columns would cut the long label off: the grid widens to hold it
    assert labelled.shape[1] > plain.shape[1] and labelled.shape[0] == plain.shape[0]
    text_row = labelled[4:20, plain.shape[1]:]  # the first band's label, beyond the plain grid's width
    assert (text_row < 128).any()
    # the images themselves are where they were
    assert np.array_equal(labelled[20:, :plain.shape[1]], plain[20:])
