"""The condition vocabulary shared by ingest, training, the worker and the API.

The order is the data's canonical order (``condition_names`` in cxr128.npz); label
column k of every training set and every bundle means ``CONDITIONS[k]``.
"""

from __future__ import annotations

CONDITIONS: list[str] = [
    "No Finding",
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
    "COVID-19",
]

# The classes the study calls rare (fewest images); reports highlight them.
RARE_CONDITIONS: list[str] = ["Hernia", "Emphysema", "Pneumothorax", "Fibrosis", "Cardiomegaly"]

_ALIASES = {n.lower().replace("_", " ").replace("-", " "): n for n in CONDITIONS}
_ALIASES.update({"covid": "COVID-19", "covid19": "COVID-19", "normal": "No Finding", "nofinding": "No Finding"})


def canonical(name: str) -> str:
    """Map a spelling found in label files ("pleural thickening", "covid19") to the canonical name."""
    key = name.strip().lower().replace("_", " ").replace("-", " ")
    if key in _ALIASES:
        return _ALIASES[key]
    if key.replace(" ", "") in _ALIASES:
        return _ALIASES[key.replace(" ", "")]
    raise KeyError(f"unknown condition {name!r}; known: {', '.join(CONDITIONS)}")


def index_of(name: str, conditions: list[str] | None = None) -> int:
    conditions = CONDITIONS if conditions is None else conditions
    return conditions.index(canonical(name)) if name not in conditions else conditions.index(name)
