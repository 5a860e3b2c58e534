"""``xraysynth privacy check``: both privacy checks on any folder of images (hospital zone).

Every PNG/JPEG/DICOM under IMAGES_DIR is read and normalised exactly as ``xraysynth ingest`` does
(so a copy of a training file maps onto the training pixels); DICOM is recognised by its content,
since PACS exports often name files by UID ("1.2.840....123") or not at all, and any other file is
listed as skipped with its reason rather than passed over in silence. The images are then compared with the training set
in TRAINSET_DIR by the model's copy check and re-identification check, at the thresholds calibrated
for that model (from its card when the card was calibrated on this training set; otherwise
calibrated here, which takes longer). The report names training images and patients: it is
hospital-zone evidence and must not leave it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "checkpoints" / "default" / "bundle.pt"
BATCH = 256

privacy_app = typer.Typer(help="Privacy checks of images against a training set (hospital zone).", no_args_is_help=True)


@privacy_app.callback()
def _group() -> None:
    """Privacy checks of images against a training set (hospital zone)."""


def _files(images_dir: Path) -> list[Path]:
    """Every file under ``images_dir`` except hidden ones (.DS_Store, ._AppleDouble, .git/...)."""
    return sorted(p for p in images_dir.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(images_dir).parts))


def _calibration(bundle, index, trainset):
    """The card's calibration if it was made on this training set, else a fresh one."""
    # lazy: loaded when the command runs, so mounting it keeps `xraysynth --help` torch-free
    from models.privacy import Calibration, calibrate

    priv = (bundle.card or {}).get("privacy") or {}
    cal_d, reid = priv.get("calibration"), (priv.get("reidentification") or {}).get("calibration")
    same_set = bool(cal_d) and (cal_d.get("index_meta") or {}).get("trainset_fingerprint") == trainset.fingerprint
    if same_set and (reid or not index.has_reid):
        cal = Calibration.from_dict({**cal_d, "bin_edges": cal_d.get("bin_edges", []), "same_patient_counts": [],
                                     "different_patient_counts": [], "reidentification": dict(reid or {})})
        return cal, "model card (calibrated on this training set)"
    return calibrate(index, trainset), "calibrated now on this training set (the card's calibration is for another one)"


def check_folder(images_dir, trainset_dir, bundle_path=None, progress=None) -> dict:
    """Per-image rows + summary (see the command). ``progress(n_done, n_total)`` is called per batch."""
    # lazy: loaded when the command runs, so mounting it keeps `xraysynth --help` torch-free
    from models.bundle import load_bundle
    from models.imaging import prepare
    from models.ingest import Skip, read_any
    from models.privacy import build_privacy_index, memorisation_filter
    from models.privacy.features import classifier_embeddings
    from models.trainset import load_trainset

    images_dir, bundle_path = Path(images_dir), Path(bundle_path or DEFAULT_BUNDLE)
    raw = bundle_path.read_bytes()
    bundle = load_bundle(raw)
    trainset = load_trainset(trainset_dir)
    cal_d = ((bundle.card or {}).get("privacy") or {}).get("calibration") or {}
    known = (cal_d.get("index_meta") or {}).get("trainset_fingerprint") == trainset.fingerprint and "pixel_scale" in cal_d
    index = build_privacy_index(bundle, trainset, scales=(cal_d["pixel_scale"], cal_d["embed_scale"]) if known else None)
    cal, cal_source = _calibration(bundle, index, trainset)
    files, pixels, skipped = [], [], []
    for f in _files(images_dir):
        try:
            arr, _ = read_any(f)
            pixels.append(prepare(arr))
            files.append(f)
        except Skip as e:
            skipped.append({"file": str(f.relative_to(images_dir)), "reason": str(e)})
    rows = []
    for s in range(0, len(files), BATCH):
        px = np.stack(pixels[s : s + BATCH])
        res = memorisation_filter(index, cal, px, classifier_embeddings(bundle.classifier, px))
        for k, f in enumerate(files[s : s + BATCH]):
            check = str(res.check[k]) or None
            row_i = int(res.reid_index[k]) if check == "reidentification" else int(res.nearest_index[k])
            reid_row = int(res.reid_index[k])
            rows.append({
                "file": str(f.relative_to(images_dir)), "flagged": check is not None, "check": check,
                "image_id": str(index.image_ids[row_i]) if row_i >= 0 else None,
                "patient_id": str(index.patient_ids[row_i]) if row_i >= 0 else None,
                "scores": {
                    "copy_score": float(res.score[k]), "copy_threshold": float(cal.threshold),
                    "copy_nearest_image_id": str(index.image_ids[res.nearest_index[k]]),
                    "reidentification_distance": float(res.reid_distance[k]) if np.isfinite(res.reid_distance[k]) else None,
                    "reidentification_threshold": cal.reid_threshold,
                    "reidentification_nearest_image_id": str(index.image_ids[reid_row]) if reid_row >= 0 else None,
                },
            })
        if progress:
            progress(min(s + BATCH, len(files)), len(files))
    checks = [r["check"] for r in rows]
    summary = {
        "n_images": len(rows), "n_flagged": sum(r["flagged"] for r in rows),
        "n_flagged_copy": checks.count("copy"), "n_flagged_reidentification": checks.count("reidentification"),
        "n_skipped": len(skipped), "skipped": skipped,
        "copy_threshold": float(cal.threshold), "reidentification_threshold": cal.reid_threshold,
        "reidentification_check": index.reid_space.name if index.has_reid else "not available: this model has no verifier",
        "calibration": cal_source, "bundle": str(bundle_path), "bundle_sha256": hashlib.sha256(raw).hexdigest(),
        "trainset": str(trainset_dir), "trainset_fingerprint": trainset.fingerprint, "index_images": len(index),
    }
    return {"summary": summary, "images": rows}


@privacy_app.command("check")
def check_command(
    images_dir: Annotated[Path, typer.Argument(help="folder of PNG/JPEG/DICOM images to check", exists=True, file_okay=False)],
    trainset: Annotated[Path, typer.Option("--trainset", help="training set folder written by `xraysynth ingest`", exists=True, file_okay=False)],
    out: Annotated[Path, typer.Option("--out", help="report JSON to write", dir_okay=False)],
    bundle: Annotated[Optional[Path], typer.Option("--bundle", help="model bundle.pt (default: the shipped default)", exists=True, dir_okay=False)] = None,
) -> None:
    """Flag images that copy a training image or show a training patient (copy + re-identification checks)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if not (trainset / "trainset.json").exists():
        raise typer.BadParameter(f"{trainset} is not a training set folder (no trainset.json; write one with `xraysynth ingest`)",
                                 param_hint="--trainset")
    console = Console(stderr=True)
    with Progress(TextColumn("checking"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("check", total=None)
        report = check_folder(images_dir, trainset, bundle, progress=lambda d, t: bar.update(task, completed=d, total=t))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    s = report["summary"]
    console.print(f"{s['n_images']} images: {s['n_flagged']} flagged ({s['n_flagged_copy']} copy, "
                  f"{s['n_flagged_reidentification']} re-identification), {s['n_skipped']} skipped -> {out}")
