"""CPU side of a shard: PNG / DICOM files, compact heatmaps, per-image JSON, and the WebDataset tar.

Runs in a process pool beside the generator, so it imports numpy, Pillow and pydicom only — never
torch. Everything here is deterministic: the same pixels and provenance give the same bytes (no
timestamps, no random UIDs, fixed tar headers), which is what makes a rewritten shard identical.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from service import layout

PNG_COMPRESS_LEVEL = 1  # ~4x faster than the default 6 for a few % more bytes on 128 px images
HEATMAP_SIZE = 32

# Fixed tar member headers: content alone decides the bytes of a shard.
TAR_MTIME = 0
TAR_MODE = 0o444

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@dataclass(frozen=True)
class ImageRecord:
    """One released image and its provenance, as the encoder needs it (plain, picklable)."""

    index: int
    condition: str
    seed: int
    attempt: int
    probability: float
    nn_distance: float
    pixels: np.ndarray  # uint8 [H, W]
    heatmap: np.ndarray | None  # uint8 [32, 32] or None when heatmaps are off


@dataclass(frozen=True)
class EncodeContext:
    """What is the same for every image of a dataset."""

    dataset_id: str
    format: str  # "png" | "dicom"
    model: dict  # {"id", "name", "version"}
    key_width: int  # zero-padded digits of the sample key (000123)
    uid_root: str
    series_of: dict  # condition -> series number (1-based, model condition order)


@dataclass(frozen=True)
class EncodedImage:
    index: int
    members: list[tuple[str, bytes]]  # (name in tar, bytes), sorted by name
    file: str  # image member name
    sha256: str  # of the image file
    heatmap_file: str | None


def _round(x: float) -> float:
    return float(round(float(x), 6))


def png_bytes(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a, dtype=np.uint8), mode="L").save(
        buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL
    )
    return buf.getvalue()


def dicom_uid(root: str, *parts: object) -> str:
    """Deterministic UID under ``root`` from (dataset id, kind, number): a rewritten shard keeps its UIDs."""
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=root, entropy_srcs=["|".join(str(p) for p in ("xraysynth", *parts))]))


def dicom_bytes(rec: ImageRecord, ctx: EncodeContext) -> bytes:
    """A Secondary Capture instance that says SYNTHETIC wherever a patient attribute would be.

    No real patient attributes exist to copy: names and IDs are synthetic markers, dates are empty
    (type 2) so the bytes do not depend on when the shard was written, and provenance sits in
    ImageComments and SeriesDescription.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds_id = ctx.dataset_id
    sop_uid = dicom_uid(ctx.uid_root, ds_id, "image", rec.index)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = ctx.uid_root + "1"
    meta.ImplementationVersionName = "XRAYSYNTH_1"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY", "SYNTHETIC"]
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = sop_uid
    # Each image is its own synthetic patient (its own PatientID, so patient-level splits stay right), and
    # in DICOM's model a study belongs to one patient and a series to one study: one study and series per
    # image. A study per dataset put hundreds of patients in one study, which PACS refuse or merge.
    ds.StudyInstanceUID = dicom_uid(ctx.uid_root, ds_id, "study", rec.index)
    ds.SeriesInstanceUID = dicom_uid(ctx.uid_root, ds_id, "series", rec.index)
    ds.StudyDate = ds.StudyTime = ds.ContentDate = ds.ContentTime = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.Modality = "OT"
    ds.ConversionType = "SYN"  # DICOM's own code for a synthetic image
    ds.BurnedInAnnotation = "NO"
    ds.Manufacturer = "xraysynth"
    ds.ManufacturerModelName = str(ctx.model.get("name", ""))[:64]
    ds.SoftwareVersions = str(ctx.model.get("version", ""))[:64]
    ds.PatientName = "SYNTHETIC^XRAYSYNTH"
    ds.PatientID = f"SYNTHETIC-{rec.index:0{ctx.key_width}d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PatientComments = "SYNTHETIC IMAGE - not a real patient"
    ds.StudyDescription = "SYNTHETIC chest X-ray (xraysynth)"
    ds.SeriesDescription = f"SYNTHETIC {rec.condition} - {ctx.model.get('name')} {ctx.model.get('version')}"[:64]
    ds.SeriesNumber = int(ctx.series_of.get(rec.condition, 0))
    ds.InstanceNumber = rec.index + 1
    ds.ImageComments = json.dumps(
        {
            "synthetic": True,
            "generator": f"xraysynth {ctx.model.get('name')}:{ctx.model.get('version')}",
            "model_version_id": str(ctx.model.get("id")),
            "dataset_id": ds_id,
            "index": rec.index,
            "condition": rec.condition,
            "seed": rec.seed,
            "attempt": rec.attempt,
        },
        sort_keys=True,
        separators=(",", ":"),
    )[:10240]
    h, w = rec.pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = h, w
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(rec.pixels, dtype=np.uint8).tobytes()

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def image_json(rec: ImageRecord, ctx: EncodeContext, file: str, sha256: str, heatmap_file: str | None) -> bytes:
    doc = {
        "index": rec.index,
        "condition": rec.condition,
        "seed": rec.seed,
        "attempt": rec.attempt,
        "probability": _round(rec.probability),
        "nn_distance": _round(rec.nn_distance),
        "model_version": {k: str(v) for k, v in ctx.model.items()},
        "file": file,
        "sha256": sha256,
        "heatmap": heatmap_file,
        "synthetic": True,
    }
    return (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()


def encode_image(rec: ImageRecord, ctx: EncodeContext) -> EncodedImage:
    key = layout.sample_key(rec.index, ctx.key_width)
    file = layout.image_file(key, ctx.format)
    data = dicom_bytes(rec, ctx) if ctx.format == "dicom" else png_bytes(rec.pixels)
    digest = hashlib.sha256(data).hexdigest()
    members = [(file, data)]
    heatmap_file = None
    if rec.heatmap is not None:
        heatmap_file = layout.heatmap_file(key)
        members.append((heatmap_file, png_bytes(rec.heatmap)))
    members.append((layout.sidecar_file(key), image_json(rec, ctx, file, digest, heatmap_file)))
    members.sort(key=lambda m: m[0])  # WebDataset: a sample's files together, in name order
    return EncodedImage(rec.index, members, file, digest, heatmap_file)


def encode_chunk(records: list[ImageRecord], ctx: EncodeContext) -> list[EncodedImage]:
    """The unit of work sent to the pool: a few dozen images amortise the pickling round trip."""
    return [encode_image(r, ctx) for r in records]


def heatmaps_to_uint8(heatmaps: np.ndarray) -> np.ndarray:
    """float [B, 32, 32] in [0, 1] -> uint8 (the stored, compact form)."""
    return np.clip(np.rint(np.asarray(heatmaps, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


class _HashingWriter(io.RawIOBase):
    """A write-through file wrapper that hashes and counts what passes."""

    def __init__(self, raw: BinaryIO):
        self.raw, self.sha = raw, hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.sha.update(b)
        self.size += len(b)
        self.raw.write(b)
        return len(b)

    def tell(self) -> int:  # tarfile asks where it is; we only ever append
        return self.size


class ShardTarWriter:
    """A WebDataset tar with fixed headers (mtime, owner, mode), members in the order given.

    Callers add samples in index order and each sample's members in name order, so the archive is
    sorted and byte-identical for identical content.
    """

    def __init__(self, fileobj: BinaryIO):
        self._out = _HashingWriter(fileobj)
        self._tar = tarfile.open(fileobj=self._out, mode="w", format=tarfile.USTAR_FORMAT)

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = TAR_MTIME
        info.mode = TAR_MODE
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.type = tarfile.REGTYPE
        self._tar.addfile(info, io.BytesIO(data))

    def add_sample(self, encoded: EncodedImage) -> None:
        for name, data in encoded.members:
            self.add(name, data)

    def close(self) -> tuple[str, int]:
        """Finish the archive; returns (sha256, size) of the tar bytes."""
        self._tar.close()
        return self._out.sha.hexdigest(), self._out.size


def read_tar_members(data: bytes | BinaryIO) -> Iterable[tuple[str, bytes]]:
    """(name, bytes) of every member, in archive order (tests, previews of old shards)."""
    src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    with tarfile.open(fileobj=src, mode="r:") as tar:
        for m in tar:
            f = tar.extractfile(m)
            yield m.name, f.read() if f else b""
