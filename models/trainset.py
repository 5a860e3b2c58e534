"""The hospital-zone training set that ``xraysynth ingest`` writes and training/evaluation read.

TRAINSET_DIR/images.npy   uint8 [N,128,128]   normalised, centre-cropped, LANCZOS-resized pixels
TRAINSET_DIR/labels.npy   uint8 [N,C]         multi-hot over ``conditions``
TRAINSET_DIR/meta.csv     image_id,patient_id,split,source,license,view
TRAINSET_DIR/trainset.json conditions, fingerprint, counts, patients per condition, licences,
                          citations, skipped files with reasons
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .conditions import CONDITIONS

META_COLUMNS = ["image_id", "patient_id", "split", "source", "license", "view"]
SPLITS = ("train", "val", "test")
TRAINSET_FILES = ("images.npy", "labels.npy", "meta.csv", "trainset.json")

# Citations and licence notes for the public sources the reference data was built from.
KNOWN_SOURCES = {
    "nih": {
        "citation": "Wang X, Peng Y, Lu L, Lu Z, Bagheri M, Summers RM. ChestX-ray8: Hospital-scale Chest X-ray "
        "Database and Benchmarks on Weakly-Supervised Classification and Localization of Common Thorax "
        "Diseases. IEEE CVPR 2017, pp. 3462-3471. Acknowledgement: the NIH Clinical Center provided this data.",
    },
    "kermany": {
        "citation": "Kermany D, Zhang K, Goldbaum M. Labeled Optical Coherence Tomography (OCT) and Chest X-Ray "
        "Images for Classification. Mendeley Data v2, 2018, doi:10.17632/rscbjbr9sj.2; Kermany DS et al., "
        "Cell 172(5):1122-1131, 2018.",
    },
    "ieee8023": {
        "citation": "Cohen JP, Morrison P, Dao L, Roth K, Duong TQ, Ghassemi M. COVID-19 Image Data Collection: "
        "Prospective Predictions Are the Future. arXiv:2006.11988, 2020.",
    },
    "hannover": {
        "citation": "Winther HB, Laser H, Gerbel S, et al. COVID-19 Image Repository. Hannover Medical School, "
        "2020, doi:10.25835/0090041.",
    },
}


def patient_split(patient_id: str) -> str:
    """Deterministic patient-level split (the reference data's rule): 80/10/10 by sha1 of the id."""
    v = int(hashlib.sha1(patient_id.encode()).hexdigest()[:8], 16) % 100
    return "train" if v < 80 else ("val" if v < 90 else "test")


def image_hash(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()).hexdigest()


def fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 over the sorted per-image lines "sha256(pixels):label bits" (order-independent)."""
    lines = sorted(
        f"{image_hash(img)}:{''.join(str(int(v)) for v in lab)}" for img, lab in zip(images, labels)
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def is_share_alike_noncommercial(license_text: str) -> bool:
    t = license_text.upper().replace(" ", "")
    return "BY-NC-SA" in t or "BYNCSA" in t


@dataclass
class TrainSet:
    images: np.ndarray  # uint8 [N,128,128]
    labels: np.ndarray  # uint8 [N,C]
    patient_ids: np.ndarray  # str [N]
    splits: np.ndarray  # str [N]
    sources: np.ndarray  # str [N]
    licenses: np.ndarray  # str [N]
    conditions: list[str]
    fingerprint: str
    image_ids: np.ndarray = None  # str [N]
    views: np.ndarray = None  # str [N]
    info: dict = field(default_factory=dict)  # trainset.json

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, mask) -> TrainSet:
        """Rows where ``mask`` (bool or index array) holds; fingerprint is recomputed lazily by callers."""
        m = np.asarray(mask)
        return TrainSet(
            self.images[m], self.labels[m], self.patient_ids[m], self.splits[m], self.sources[m],
            self.licenses[m], list(self.conditions), self.fingerprint,
            None if self.image_ids is None else self.image_ids[m],
            None if self.views is None else self.views[m], dict(self.info),
        )

    def split(self, name: str) -> TrainSet:
        return self.subset(self.splits == name)

    def patients_per_condition(self) -> dict[str, int]:
        return patients_per_condition(self.labels, self.patient_ids, self.conditions)


def patients_per_condition(labels: np.ndarray, patient_ids: np.ndarray, conditions: list[str]) -> dict[str, int]:
    return {c: int(len(set(patient_ids[labels[:, k] > 0]))) for k, c in enumerate(conditions)}


def summarise(images, labels, meta_rows: list[dict], conditions: list[str], skipped: list[dict]) -> dict:
    """Everything trainset.json holds (and the model card copies)."""
    pids = np.array([r["patient_id"] for r in meta_rows], dtype=str)
    splits = np.array([r["split"] for r in meta_rows], dtype=str)
    licences: dict[str, int] = {}
    sources: dict[str, int] = {}
    for r in meta_rows:
        licences[r["license"]] = licences.get(r["license"], 0) + 1
        sources[r["source"]] = sources.get(r["source"], 0) + 1
    citations = {s: KNOWN_SOURCES[s]["citation"] for s in sorted(sources) if s in KNOWN_SOURCES}
    nc_sa = sorted({r["source"] for r in meta_rows if is_share_alike_noncommercial(r["license"])})
    return {
        "conditions": list(conditions),
        "fingerprint": fingerprint(images, labels),
        "n_images": int(len(images)),
        "n_patients": int(len(set(pids))),
        "images_per_split": {s: int((splits == s).sum()) for s in SPLITS},
        "images_per_condition": {c: int(labels[:, k].sum()) for k, c in enumerate(conditions)},
        "images_per_condition_per_split": {
            s: {c: int(labels[splits == s, k].sum()) for k, c in enumerate(conditions)} for s in SPLITS
        },
        "patients_per_condition": patients_per_condition(labels, pids, conditions),
        "patients_per_condition_per_split": {
            s: patients_per_condition(labels[splits == s], pids[splits == s], conditions) for s in SPLITS
        },
        "images_per_source": sources,
        "licences": licences,
        "citations": citations,
        "share_alike_noncommercial": {
            "applies": bool(nc_sa),
            "sources": nc_sa,
            "n_images": int(sum(is_share_alike_noncommercial(r["license"]) for r in meta_rows)),
            "note": (
                "Some training images are licensed CC BY-NC-SA: images generated by a model trained on them "
                "may be used non-commercially only and must be shared under the same licence (CC BY-NC-SA 4.0)."
                if nc_sa else ""
            ),
        },
        "skipped": skipped,
    }


def check_replaceable(out_dir) -> None:
    """Raise FileExistsError unless ``out_dir`` is absent, empty or a training set: writing one there
    replaces the whole folder, which must not delete anything else."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a training set folder")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in TRAINSET_FILES)
        if foreign:
            raise FileExistsError(f"{out} holds files that are not part of a training set "
                                  f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); "
                                  "choose a new or empty folder")


def write_trainset(out_dir, images: np.ndarray, labels: np.ndarray, meta_rows: list[dict],
                   conditions: list[str] = CONDITIONS, skipped: list[dict] | None = None) -> dict:
    """Write the training set all at once: the files go to a hidden sibling folder that then takes
    ``out_dir``'s place, so a crash or Ctrl-C never leaves new images beside an old trainset.json
    (a set that loads) and an existing set stays whole until the new one is complete."""
    out = Path(out_dir)
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.with_name(f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    stage.mkdir()  # not mkdtemp: the folder keeps the umask's permissions, as out_dir had
    try:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        labels = np.ascontiguousarray(labels, dtype=np.uint8)
        np.save(stage / "images.npy", images)
        np.save(stage / "labels.npy", labels)
        with open(stage / "meta.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=META_COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(meta_rows)
        info = summarise(images, labels, meta_rows, conditions, skipped or [])
        (stage / "trainset.json").write_text(json.dumps(info, indent=2))
        if out.is_dir() and any(out.iterdir()):
            old = out.with_name(f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.old")
            os.rename(out, old)
            os.rename(stage, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, out)  # onto nothing or an empty folder: one atomic rename
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # gone already after a successful rename
    return info


def load_trainset(path) -> TrainSet:
    d = Path(path)
    info = json.loads((d / "trainset.json").read_text())
    images = np.load(d / "images.npy")
    labels = np.load(d / "labels.npy")
    with open(d / "meta.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    col = lambda k: np.array([r.get(k, "") or "" for r in rows], dtype=str)  # noqa: E731
    if len(rows) != len(images) or labels.shape != (len(images), len(info["conditions"])):
        raise ValueError(f"{d}: images, labels and meta.csv disagree in length")
    return TrainSet(
        images=images, labels=labels, patient_ids=col("patient_id"), splits=col("split"),
        sources=col("source"), licenses=col("license"), conditions=list(info["conditions"]),
        fingerprint=info["fingerprint"], image_ids=col("image_id"), views=col("view"), info=info,
    )
