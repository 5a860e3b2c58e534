"""A ModelVersion row from a bundle's model card: the one builder, used by registration with a privacy
index (workers/registration.py) and by the CLI's index-less draft of the shipped model, so every row
reads the card (training fingerprint, patients per condition, DP budget) the same way."""

from __future__ import annotations

from service import layout
from service.modelversions.models import ModelStatus, ModelVersion

DEFAULT_ARCHITECTURE = "conditional DCGAN"


def first(*values):
    """The first value that is not missing or empty."""
    for v in values:
        if v not in (None, "", {}, []):
            return v
    return None


def _section(card: dict, name: str) -> dict:
    value = card.get(name)
    return value if isinstance(value, dict) else {}


def card_fingerprint(card: dict) -> str | None:
    """The training-data fingerprint a model card names, wherever the card's writer put it."""
    td = _section(card, "training_data")
    return first(card.get("training_fingerprint"), card.get("trainset_fingerprint"), card.get("fingerprint"),
                 td.get("fingerprint"))


def model_version_fields(
    *,
    card: dict,
    sha256: str,
    name: str,
    version: str,
    size_bytes: int | None = None,
    privacy_index_sha256: str | None = None,
    privacy_calibration: dict | None = None,
) -> dict:
    """The columns of a draft ModelVersion for the checkpoint with this card and sha256. Without a
    privacy index the row is a draft the publish rules refuse until it is registered with one."""
    if size_bytes is not None and size_bytes <= 0:
        raise ValueError("the checkpoint is empty")
    td = _section(card, "training_data")
    dp = _section(card, "differential_privacy")
    ppc = first(card.get("patients_per_condition"), td.get("patients_per_condition")) or {}
    return {
        "name": name,
        "version": version,
        "architecture": str(card.get("architecture") or DEFAULT_ARCHITECTURE),
        "image_size": int(card.get("image_size") or 128),
        "conditions": list(card.get("conditions") or []),
        "checkpoint_key": layout.checkpoint_key(name, version),
        "checkpoint_sha256": sha256,
        "privacy_index_key": layout.privacy_index_key(name, version) if privacy_index_sha256 else None,
        "privacy_index_sha256": privacy_index_sha256,
        "training_fingerprint": str(card_fingerprint(card) or "unknown")[:64],
        "patients_per_condition": {k: int(v) for k, v in ppc.items()},
        "dp_epsilon": first(card.get("dp_epsilon"), dp.get("epsilon")),
        "dp_delta": first(card.get("dp_delta"), dp.get("delta")),
        "metrics": card.get("metrics") or {},
        "privacy_calibration": privacy_calibration,
        "card": card,
        "status": ModelStatus.draft,
    }


def model_version_row(**fields) -> ModelVersion:
    """A new (unsaved) ModelVersion; the arguments are model_version_fields'."""
    return ModelVersion(**model_version_fields(**fields))
