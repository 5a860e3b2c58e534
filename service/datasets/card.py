"""The dataset card: one shape for the provisional card (built from the database before release) and
the final one (written by the worker's finalise step as dataset_card.json), served by
GET /v1/datasets/{id}/card. Sections only the release can fill are absent from a provisional card.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict

# the model card's heatmap faithfulness entry (models.faithfulness.with_heatmap_faithfulness)
HEATMAPS_KEY = "heatmaps"


class CardModelVersion(BaseModel):
    """The generator version that made (or will make) the images, with its public card."""

    id: str
    name: str
    version: str
    architecture: str
    image_size: int
    training_fingerprint: str
    published_at: str | None = None
    card: dict
    metrics: dict | None = None
    privacy: dict | None = None
    conditions: list[dict] | None = None


class CardRequest(BaseModel):
    conditions: dict[str, int]  # in image order
    format: str
    heatmaps: bool
    seed: int
    purpose: str
    requested_at: str | None = None
    requested_by: str | None = None
    total_images: int | None = None
    image_order: str | None = None


class CardRelease(BaseModel):
    id: str
    status: str
    released_at: str
    total_images: int
    synthetic: bool
    licence: str | None = None


class DatasetCard(BaseModel):
    # A card written by an older worker keeps the fields this model does not name.
    model_config = ConfigDict(extra="allow")

    provisional: bool
    note: str | None = None
    card_version: int | None = None
    dataset_id: str | None = None
    status: str | None = None
    dataset: CardRelease | None = None
    request: CardRequest | None = None
    model: CardModelVersion | None = None
    # before release: the review so far, the filter figures and progress; after: who approved
    review: dict | None = None
    privacy_summary: dict | None = None
    progress: dict | None = None
    approvals: list[dict] | None = None
    metrics: dict | None = None
    privacy: dict | None = None
    training_data: dict | None = None
    # which requested conditions' heatmaps the model card measured as not evidence, and why
    heatmap_faithfulness: dict | None = None
    obligations: list[str] | None = None
    files: dict | None = None
    reproduce: str | None = None
    how_to_cite: dict | None = None

    def to_json(self) -> dict:
        """The card as served and stored: the fields its builder set, JSON-ready."""
        return self.model_dump(mode="json", exclude_unset=True)


def uninformative_heatmaps(model_card: dict | None) -> dict[str, str]:
    """Condition -> why its heatmaps are not evidence, for each condition the model card measured as
    uninformative; conditions the card did not measure are absent."""
    section = (model_card or {}).get(HEATMAPS_KEY)
    per = section.get("conditions") if isinstance(section, dict) else None
    out = {}
    for condition, v in (per or {}).items():
        if not isinstance(v, dict) or v.get("informative") is not False:
            continue
        syn = v.get("synthetic") or {}
        empty = syn.get("empty_share") if isinstance(syn.get("empty_share"), (int, float)) else 0.0
        margin, se = syn.get("margin"), syn.get("margin_se") or 0.0
        points_somewhere = isinstance(margin, (int, float)) and margin - 2 * se > 0
        if empty >= 1.0:
            out[condition] = "the classifier finds no evidence"
        elif points_somewhere:
            out[condition] = f"{empty:.0%} of them are empty, the classifier often finds no evidence"
        elif empty > 0:
            out[condition] = f"{empty:.0%} of them are empty and the region the rest mark matters no more than a random one"
        else:
            out[condition] = "the region they mark matters no more than a random one"
    return out


def heatmap_faithfulness(model_card: dict | None, conditions: Iterable[str]) -> dict | None:
    """The card section naming which of these conditions' heatmaps the model card measured as not
    evidence (in the order given), with the rule and method; None for a model card that did not measure."""
    measured = (model_card or {}).get(HEATMAPS_KEY)
    if not isinstance(measured, dict):
        return None
    unin = uninformative_heatmaps(model_card)
    return {"uninformative_conditions": {c: unin[c] for c in conditions if c in unin},
            "rule": measured.get("rule"), "method": measured.get("method"), "caveat": measured.get("caveat")}
