"""Build small DICOM files with pydicom for the ingest tests (no data from outside the repo)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
US_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
SOP_FOR = {"CR": CR_STORAGE, "DX": DX_STORAGE, "CT": CTImageStorage, "MR": MRImageStorage, "US": US_STORAGE}


def chest_like(h: int = 160, w: int = 192, bits: int = 12, seed: int = 0) -> np.ndarray:
    """A deterministic non-trivial image (two dark 'lungs' in a bright body) in [0, 2^bits)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    top = (1 << bits) - 1
    img = 0.75 * top * np.ones((h, w))
    for cx in (w * 0.32, w * 0.68):
        lung = ((xx - cx) / (w * 0.16)) ** 2 + ((yy - h * 0.5) / (h * 0.33)) ** 2 < 1
        img[lung] = 0.25 * top
    img += rng.normal(0, top * 0.02, size=img.shape)
    img[: h // 4, : w // 4] = 0.05 * top  # a dark corner so orientation is checkable
    return np.clip(img, 0, top).astype(np.uint16)


def make_dicom(path: Path, pixels: np.ndarray | None, *, modality: str = "CR", bits_stored: int = 12,
               photometric: str = "MONOCHROME2", body_part: str | None = "CHEST", view: str | None = "PA",
               rescale: tuple[float, float] | None = None, window: tuple[float, float] | None = None,
               pixel_representation: int = 0, raw_pixel_bytes: bytes | None = None) -> Path:
    """Write a minimal but valid DICOM file; ``pixels=None`` writes one without Pixel Data."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_FOR.get(modality, CR_STORAGE)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "TEST"
    ds.Modality = modality
    if body_part is not None:
        ds.BodyPartExamined = body_part
    if view is not None:
        ds.ViewPosition = view
    if pixels is not None:
        h, w = pixels.shape
        ds.Rows, ds.Columns = h, w
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = 16
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = pixel_representation
        if rescale is not None:
            ds.RescaleSlope, ds.RescaleIntercept = rescale
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = window
        dtype = np.int16 if pixel_representation else np.uint16
        ds.PixelData = raw_pixel_bytes if raw_pixel_bytes is not None else pixels.astype(dtype).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def compress_jpeg2000(path: Path, out: Path) -> Path:
    """Re-encode a file as JPEG 2000 Lossless through pydicom's pylibjpeg-openjpeg encoder."""
    from pydicom.uid import JPEG2000Lossless

    ds = pydicom.dcmread(path)
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    ds.save_as(out, enforce_file_format=True)
    return out


def edit_dicom(path: Path, edit) -> Path:
    """Rewrite a file after ``edit(ds)``, unvalidated: for headers a real export gets wrong."""
    ds = pydicom.dcmread(path)
    edit(ds)
    ds.save_as(path, enforce_file_format=False)
    return path
