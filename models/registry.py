"""Model registry, the pure part: the model card, the checkpoint bytes and their sha256.

A model version = a checkpoint addressed and verified by sha256 + a ModelVersion row carrying the
card. These functions build what registration stores, with no I/O beyond reading a bundle; where it
is stored and the row itself belong to service/ (layout, modelversions.rows) and workers/registration.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

from .bundle import bundle_bytes, load_bundle, write_atomic

ARCHITECTURE = "conditional DCGAN 128px: embedding + conditional-BN generator, projection discriminator, hinge loss"

CONFOUNDING_CAVEATS = [
    "Source and class are confounded in the training data: almost all Pneumonia images are paediatric "
    "(Kermany, Guangzhou, ages 1-5) and every COVID-19 image comes from two COVID-only collections "
    "(ieee8023, Hannover). The generator and the classifier can learn 'which hospital' instead of "
    "'which disease'; disease signals are also reported on the NIH-only subset.",
    "About 3,636 Kermany images were squashed to 224x224 by their uploader (narrow-looking chests).",
    "NIH labels were mined from reports by NLP (~90% accurate); the NIH subset is a convenience sample "
    "whose prevalences do not match the full NIH set.",
    "Rare conditions have very few test images (Hernia 4, Emphysema 4, Fibrosis 5, Cardiomegaly 6): "
    "their per-condition metrics have wide uncertainty.",
    "Synthetic images are not clinical data and must not be used for diagnosis.",
]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_card(*, trainset, config: dict, training: dict, classifier_trained: bool = True,
               metrics: dict | None = None, name: str = "xraysynth-dcgan", version: str = "0") -> dict:
    """The model card: what was trained on what, how, under which licences, and how well it does."""
    info = dict(trainset.info or {})
    train_split = trainset.split("train") if hasattr(trainset, "split") else trainset
    dp = training.get("dp")
    licences = info.get("licences", {})
    nc_sa = info.get("share_alike_noncommercial", {})
    card = {
        "name": name,
        "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "architecture": ARCHITECTURE,
        "image_size": int(config.get("image_size", 128)),
        "conditions": list(trainset.conditions),
        "config": dict(config),
        "training": {k: v for k, v in training.items() if k not in ("trainset", "out", "classifier", "extra")},
        "training_data": {
            "fingerprint": trainset.fingerprint,
            "split_used": "train (model selection on val, metrics on test)",
            "n_images": info.get("n_images", len(trainset)),
            "images_per_split": info.get("images_per_split"),
            "images_per_source": info.get("images_per_source"),
            "patients_per_condition": train_split.patients_per_condition(),
            "images_per_condition": {c: int(train_split.labels[:, k].sum()) for k, c in enumerate(trainset.conditions)},
        },
        "licences": {
            "training_images": licences,
            "citations": info.get("citations", {}),
            "share_alike_noncommercial": nc_sa,
            "synthetic_output_licence": (
                "CC BY-NC-SA 4.0 (inherited: the training data includes CC BY-NC-SA images from the "
                "ieee8023 COVID-19 image data collection; non-commercial use only, share alike, cite the sources)"
                if nc_sa.get("applies") else "per the training data's licences (see citations)"
            ),
        },
        "classifier": {
            "trained": bool(classifier_trained),
            "role": "Grad-CAM heatmaps, per-image probabilities, evaluation features, privacy embeddings",
            "note": "trained on real images without differential privacy; stays in the hospital zone",
        },
        "differential_privacy": None if not dp else {
            "epsilon": dp.get("epsilon"), "delta": dp.get("delta"),
            "noise_multiplier": dp.get("noise_multiplier"), "max_grad_norm": dp.get("max_grad_norm"),
            "sample_rate": dp.get("sample_rate"), "steps": dp.get("steps"), "accountant": dp.get("accountant"),
            "mechanism": dp.get("mechanism"),
            "scope": "generator and discriminator; the bundled classifier is not DP-trained",
        },
        "caveats": list(CONFOUNDING_CAVEATS),
        "metrics": metrics or {},
    }
    return card


def bundle_checkpoint(bundle) -> tuple[bytes, str]:
    """A loaded Bundle -> (checkpoint bytes as save_bundle writes them, sha256 hex)."""
    data = bundle_bytes(generator=bundle.generator, classifier=bundle.classifier,
                        discriminator=bundle.discriminator, conditions=bundle.conditions,
                        config=bundle.config, card=bundle.card, verifier=getattr(bundle, "verifier", None))
    return data, sha256_bytes(data)


def file_checkpoint(path) -> tuple[bytes, str]:
    data = Path(path).read_bytes()
    return data, sha256_bytes(data)


def with_card(bundle_source, card: dict) -> tuple[bytes, str]:
    """Re-serialise a bundle (path or bytes) with a new card (e.g. after evaluation) -> (bytes, sha256)."""
    b = load_bundle(bundle_source)
    b.card = card
    return bundle_checkpoint(b)


def card_json(card: dict) -> str:
    """card.json's text: sorted keys, NumPy scalars and arrays as plain JSON."""
    def plain(o):
        return o.tolist() if hasattr(o, "tolist") else str(o)

    return json.dumps(card, indent=2, sort_keys=True, default=plain) + "\n"


def write_bundle(path, bundle, *, card_beside: bool = False) -> bytes:
    """Write a loaded bundle atomically with everything it carries (weights, verifier, card).

    Every command that rewrites a card goes through here, so none of them drops the re-identification
    verifier on the way; card.json beside the bundle is refreshed where one is kept (the shipped
    default's) or when ``card_beside`` asks for one.
    """
    data, _ = bundle_checkpoint(bundle)
    write_atomic(path, data)
    beside = Path(path).with_name("card.json")
    if card_beside or beside.exists():
        beside.write_text(card_json(bundle.card))
    return data


