"""Memorisation audit and membership-inference tests (hospital zone).

    index = build_privacy_index(bundle, trainset)          # part of a model version
    cal = calibrate(index, trainset)                       # threshold + evidence, JSON via to_dict()
    res = filter_and_replace(generate_fn, index, cal, image_indices)   # the worker's loop
    membership_inference(bundle, trainset)                 # AUCs for the model card

Nothing here touches CUDA at import; torch is imported inside the functions that need it.
"""

from models.privacy.build import build_privacy_index
from models.privacy.calibration import MIN_THRESHOLD, Calibration, calibrate
from models.privacy.evidence import evidence_payload, render_pairs_png
from models.privacy.filter import (
    FilterResult,
    MemorisationError,
    Replaced,
    filter_and_replace,
    memorisation_filter,
)
from models.privacy.index import Nearest, PrivacyIndex
from models.privacy.mia import membership_inference, roc_auc

__all__ = [
    "MIN_THRESHOLD",
    "Calibration",
    "FilterResult",
    "MemorisationError",
    "Nearest",
    "PrivacyIndex",
    "Replaced",
    "build_privacy_index",
    "calibrate",
    "evidence_payload",
    "filter_and_replace",
    "membership_inference",
    "memorisation_filter",
    "render_pairs_png",
    "roc_auc",
]
