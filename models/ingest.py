"""``xraysynth ingest``: real DICOM/PNG/JPEG chest radiographs + a labels CSV -> a training set.

Each file either becomes one normalised 128 px image or is skipped with a reason a person can act
on (wrong modality, not a chest, unreadable, no pixels, unknown label, duplicate, ...). One bad
file never stops the run; a summary table closes it.

DICOM display pipeline, in the standard's order: stored values (BitsStored respected) -> Modality
LUT / rescale slope+intercept -> VOI LUT or window centre/width -> MONOCHROME1 (or Presentation LUT
Shape INVERSE) inverted so that bright = dense everywhere -> robust percentile window -> centre crop +
LANCZOS resize. An invalid VOI (window width < 1, unknown function, short LUT) is ignored, as viewers
do: the percentile window that follows still gives a usable image.
Compressed transfer syntaxes (JPEG, JPEG-LS, JPEG 2000, RLE) decode through pydicom's plugins
(pylibjpeg, pylibjpeg-openjpeg, pylibjpeg-libjpeg).
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .conditions import CONDITIONS, canonical
from .imaging import IMAGE_SIZE, prepare
from .trainset import check_replaceable, image_hash, patient_split, write_trainset

RADIOGRAPH_MODALITIES = {"CR", "DX"}
# DICOM SOP classes that are projection radiographs, for files that omit Modality.
RADIOGRAPH_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1",  # CR Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
}
# BodyPartExamined is free text in practice ("PORT CHEST", "CHEST_PA", "Thorax"): chest if any word is one of these.
CHEST_BODY_WORDS = {"CHEST", "THORAX", "LUNG", "LUNGS", "TORAX", "CXR"}
# Not frontal: laterals, decubitus and obliques.
LATERAL_VIEWS = {"LL", "RL", "LAT", "LATERAL", "LLD", "RLD", "LLO", "RLO", "OBLIQUE"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
GREYSCALE_OR_COLOUR = {"MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"}
REQUIRED_COLUMNS = ("path", "conditions", "patient_id")


class Skip(Exception):
    """A file that is not (usable as) a frontal chest radiograph; the message is the reason."""


class IngestError(ValueError):
    """The whole run is refused (labels CSV unreadable or without the needed columns, --out unusable);
    nothing is written."""


@dataclass
class IngestReport:
    n_rows: int = 0
    n_ingested: int = 0
    skipped: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"
    except OSError:
        return False


def _mask_bits_stored(arr: np.ndarray, ds) -> np.ndarray:
    """Keep only the BitsStored low bits (unused high bits may hold overlays or garbage).

    pydicom masks native data itself; some codecs hand back the raw container, so do it here too.
    """
    bits_alloc = int(getattr(ds, "BitsAllocated", arr.dtype.itemsize * 8))
    bits_stored = int(getattr(ds, "BitsStored", bits_alloc))
    if bits_stored >= bits_alloc or not np.issubdtype(arr.dtype, np.integer):
        return arr
    if int(getattr(ds, "PixelRepresentation", 0)) == 0:
        return arr & np.array((1 << bits_stored) - 1, dtype=arr.dtype)
    # signed: sign-extend from bit (bits_stored - 1)
    a = arr.astype(np.int64) & ((1 << bits_stored) - 1)
    sign = 1 << (bits_stored - 1)
    return ((a ^ sign) - sign).astype(np.int32)


def read_dicom(path: Path) -> tuple[np.ndarray, dict]:
    """DICOM file -> float display image (bright = dense) + header facts; raises Skip."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError) as e:
        raise Skip(f"unreadable DICOM ({type(e).__name__}: {e})") from None
    modality = str(getattr(ds, "Modality", "") or "").upper()
    sop = str(getattr(ds, "SOPClassUID", "") or "")
    if modality:
        if modality not in RADIOGRAPH_MODALITIES:
            raise Skip(f"modality {modality} is not a projection radiograph (need CR or DX)")
    elif sop not in RADIOGRAPH_SOP_CLASSES:
        raise Skip("no Modality and SOP class is not CR/DX")
    body = str(getattr(ds, "BodyPartExamined", "") or "").strip().upper()
    if body and not CHEST_BODY_WORDS & set(re.split(r"[^A-Z]+", body)):
        raise Skip(f"body part {body} is not chest")
    view = str(getattr(ds, "ViewPosition", "") or "").strip().upper()
    if view in LATERAL_VIEWS:
        raise Skip(f"lateral view ({view}); only frontal chest radiographs are used")
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise Skip("no pixel data")
    try:
        n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        n_frames = 1
    if n_frames > 1:  # a cine or a stack: which frame is the radiograph is not ours to guess
        raise Skip(f"multi-frame DICOM ({n_frames} frames); export the radiograph as a single-frame image")
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper()
    if photometric not in GREYSCALE_OR_COLOUR:
        raise Skip(f"PhotometricInterpretation {photometric} is not a greyscale or colour image")
    try:
        arr = ds.pixel_array
    except Exception as e:  # noqa: BLE001 — decoder missing, truncated stream, inconsistent header ...
        raise Skip(f"pixel data could not be decoded ({type(e).__name__}: {e})") from None
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and int(getattr(ds, "SamplesPerPixel", 1)) > 1:
        arr = arr[..., :3].astype(np.float64).mean(axis=-1)  # colour export of a radiograph: luminance
    elif arr.ndim != 2:
        raise Skip(f"unexpected pixel array shape {arr.shape}")
    else:
        arr = _mask_bits_stored(arr, ds)
        try:
            arr = apply_modality_lut(arr, ds)
        except Exception as e:  # noqa: BLE001 — malformed LUT or rescale values: numpy/pydicom errors of any kind
            raise Skip(f"invalid Modality LUT or RescaleSlope/RescaleIntercept ({type(e).__name__}: {e})") from None
        try:
            arr = apply_voi_lut(arr, ds, index=0)  # VOI LUT sequence, else first window; no-op if none
        except Exception:  # noqa: BLE001 — invalid VOI: ignored (see the module docstring)
            pass
    arr = np.asarray(arr, dtype=np.float64)
    inverse = str(getattr(ds, "PresentationLUTShape", "") or "").strip().upper() == "INVERSE"
    if photometric == "MONOCHROME1" or inverse:  # 0 = white: flip so that bright = dense, like MONOCHROME2
        arr = arr.max() + arr.min() - arr
    if arr.size == 0 or not np.isfinite(arr).all():
        raise Skip("pixel data empty or not finite")
    return arr, {"view": view if view in ("PA", "AP") else str(getattr(ds, "ViewPosition", "") or "")}


def read_image_file(path: Path) -> tuple[np.ndarray, dict]:
    """PNG/JPEG -> float grayscale (16-bit PNGs keep their depth); raises Skip."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I", "F"):
                arr = np.asarray(im, dtype=np.float64)
            else:
                arr = np.asarray(im.convert("L"), dtype=np.float64)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise Skip(f"unreadable image ({type(e).__name__}: {e})") from None
    if arr.ndim != 2 or arr.size == 0:
        raise Skip("no pixel data")
    return arr, {}


def read_any(path: Path) -> tuple[np.ndarray, dict]:
    if not path.exists():
        raise Skip("file not found")
    if path.is_dir():
        raise Skip("a folder, not an image file")
    if _is_dicom(path):
        return read_dicom(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return read_image_file(path)
    raise Skip(f"unsupported file type {path.suffix or '(no extension)'}")


def _parse_conditions(text: str, conditions: list[str]) -> np.ndarray:
    names = [t for t in (text or "").split("|") if t.strip()]
    if not names:
        raise Skip("no condition label")
    y = np.zeros(len(conditions), dtype=np.uint8)
    for n in names:
        try:
            y[conditions.index(canonical(n))] = 1
        except (KeyError, ValueError):
            raise Skip(f"unknown condition {n.strip()!r}") from None
    return y


def read_labels(labels_csv) -> list[tuple[int, dict]]:
    """The labels CSV as (line number, row) pairs; raises IngestError naming the file and line.

    Spreadsheet exports vary: a UTF-8 byte-order mark (Excel's "CSV UTF-8"), CRLF, ';' or tab as the
    delimiter, "Patient ID" for patient_id, spaces around values; all mean the same table.
    """
    data = Path(labels_csv).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise IngestError(f"{labels_csv}: line {line} is not UTF-8 text; save the file as CSV UTF-8") from None
    header = text.splitlines()[0] if text.strip() else ""
    delimiter = next((d for d in (",", ";", "\t") if d in header), ",")
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter)
    names = [re.sub(r"\s+", "_", h.strip().lower()) for h in next(reader, [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise IngestError(f"{labels_csv}: no column {', '.join(missing)} in the header line "
                          f"(needs {', '.join(REQUIRED_COLUMNS)}; got {', '.join(names) or 'nothing'})")
    dupes = sorted({n for n in names if n and names.count(n) > 1})
    if dupes:
        raise IngestError(f"{labels_csv}: column {', '.join(dupes)} appears twice in the header line")
    rows = []
    for values in reader:
        if not any(v.strip() for v in values):
            continue  # blank line (a trailing one from a spreadsheet)
        rows.append((reader.line_num, {n: v.strip() for n, v in zip(names, values) if n}))
    return rows


def _rel_path(text: str) -> str:
    """A CSV path as this machine spells it: lists made on Windows separate folders with backslashes."""
    return os.path.normpath(text.replace("\\", "/"))


@dataclass
class _Seen:
    """What earlier rows of the CSV took: rows ingested so far may not be repeated or contradicted."""

    paths: dict[str, int] = field(default_factory=dict)  # normalised path -> row
    image_ids: dict[str, int] = field(default_factory=dict)  # image_id -> row
    patient_splits: dict[str, tuple[str, int]] = field(default_factory=dict)  # patient -> (split, row)
    pixels: dict[str, str] = field(default_factory=dict)  # sha256 of the 128 px image -> image_id

    def add(self, line: int, path: str, pid: str, split: str, image_id: str, pixel_hash: str) -> None:
        self.paths[_rel_path(path)] = line
        self.image_ids[image_id] = line
        self.patient_splits.setdefault(pid, (split, line))
        self.pixels[pixel_hash] = image_id


def _check_row(i: int, row: dict, conditions: list[str], seen: _Seen):
    """Everything about a row that needs no pixels -> (patient_id, labels, split, image_id); raises Skip."""
    if not row.get("path"):
        raise Skip("no path")
    pid = row.get("patient_id", "")
    if not pid:
        raise Skip("no patient_id (needed for patient-level splits and privacy)")
    y = _parse_conditions(row.get("conditions", ""), conditions)
    view = row.get("view", "").upper()
    if view in LATERAL_VIEWS:
        raise Skip(f"lateral view ({view} in the view column); only frontal chest radiographs are used")
    split = row.get("split", "").lower() or patient_split(pid)
    if split not in ("train", "val", "test"):
        raise Skip(f"unknown split {row['split']!r} (train, val or test)")
    if _rel_path(row["path"]) in seen.paths:
        raise Skip(f"path listed twice (already ingested from row {seen.paths[_rel_path(row['path'])]})")
    if pid in seen.patient_splits and seen.patient_splits[pid][0] != split:
        s0, line0 = seen.patient_splits[pid]
        # One patient on both sides of a split would leak into evaluation and privacy calibration.
        raise Skip(f"patient already in another split ({pid} is in {s0} from row {line0}; "
                   "splits must be patient-level)")
    image_id = row.get("image_id", "") or f"img{i:06d}"
    if image_id in seen.image_ids:
        raise Skip(f"image_id used twice ({image_id} already taken by row {seen.image_ids[image_id]})")
    return pid, y, split, image_id


def ingest(source_dir, labels_csv, out_dir, *, conditions: list[str] = CONDITIONS, default_license: str = "",
           image_size: int = IMAGE_SIZE, progress: bool = True, console=None) -> IngestReport:
    """Read every row of ``labels_csv`` (path relative to ``source_dir``) and write the training set.

    Nothing is written when no row could be ingested, and an existing set at ``out_dir`` is replaced
    only by a complete new one. Raises IngestError (before reading any image) for a CSV or --out
    that cannot work at all.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = console or Console(stderr=True)
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    try:
        check_replaceable(out_dir)
    except FileExistsError as e:
        raise IngestError(f"--out: {e}") from None
    rows = read_labels(labels_csv)

    report = IngestReport(n_rows=len(rows))
    images, labels, meta = [], [], []
    seen = _Seen()
    with Progress(TextColumn("ingest"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=not progress, transient=True) as bar:
        task = bar.add_task("ingest", total=len(rows))
        for i, (line, row) in enumerate(rows):
            rel = row.get("path", "")
            try:
                pid, y, split, image_id = _check_row(i, row, conditions, seen)
                arr, facts = read_any(source_dir / _rel_path(rel))
                if min(arr.shape) < 32:
                    raise Skip(f"image too small ({arr.shape[1]}x{arr.shape[0]})")
                if np.ptp(arr) == 0:
                    raise Skip("blank image (every pixel has the same value)")
                pixels = prepare(arr, image_size)
                h = image_hash(pixels)
                if h in seen.pixels:
                    raise Skip(f"duplicate pixels (same image as {seen.pixels[h]})")
            except Skip as reason:
                report.skipped.append({"row": line, "path": rel, "reason": str(reason)})
                console.print(f"[yellow]skip[/] row {line} {escape(rel)}: {escape(str(reason))}", highlight=False)
                bar.advance(task)
                continue
            seen.add(line, rel, pid, split, image_id, h)
            images.append(pixels)
            labels.append(y)
            meta.append({
                "image_id": image_id, "patient_id": pid, "split": split,
                "source": row.get("source", "") or "local",
                "license": row.get("license", "") or default_license,
                "view": row.get("view", "") or facts.get("view", ""),
            })
            bar.advance(task)

    report.n_ingested = len(images)
    if not images:
        console.print(f"[red]no row of {escape(str(labels_csv))} could be ingested: nothing written to "
                      f"{escape(str(out_dir))}[/]")
    else:
        report.info = write_trainset(out_dir, np.stack(images), np.stack(labels), meta, conditions, report.skipped)
    print_summary(report, console)
    return report


def print_summary(report: IngestReport, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    info = report.info
    if info:
        t = Table(title=f"ingest: {report.n_ingested} of {report.n_rows} files -> training set "
                        f"(fingerprint {info.get('fingerprint', '')[:12]})")
        t.add_column("condition")
        for s in ("train", "val", "test"):
            t.add_column(f"{s} images", justify="right")
        t.add_column("patients", justify="right")
        per = info.get("images_per_condition_per_split", {})
        for c in info.get("conditions", []):
            t.add_row(c, *[str(per.get(s, {}).get(c, 0)) for s in ("train", "val", "test")],
                      str(info["patients_per_condition"][c]))
        console.print(t)
    if report.skipped:
        reasons: dict[str, int] = {}
        for s in report.skipped:
            key = s["reason"].split(" (")[0]
            reasons[key] = reasons.get(key, 0) + 1
        st = Table(title=f"skipped: {len(report.skipped)} files")
        st.add_column("reason")
        st.add_column("files", justify="right")
        for r, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
            st.add_row(escape(r), str(n))
        console.print(st)
