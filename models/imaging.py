"""Pixel conventions: uint8 grayscale [B,128,128] on disk, float [-1,1] [B,1,128,128] in the networks.

Also the image normalisation ingest applies to every source (DICOM, PNG, JPEG), so a hospital's
training set and anything compared with it share one intensity convention.
"""

from __future__ import annotations

import numpy as np

IMAGE_SIZE = 128


def to_uint8(x) -> np.ndarray:
    """Tensor in [-1,1], [B,1,H,W] or [B,H,W] -> uint8 numpy [B,H,W] (rounded, clipped)."""
    import torch

    x = x.detach()
    if x.dim() == 4:
        x = x[:, 0]
    a = ((x.float().clamp(-1, 1) + 1.0) * 127.5).round()
    return a.to(torch.uint8).cpu().numpy()


def from_uint8(a, device=None):
    """uint8 [B,H,W] (numpy or tensor) -> float32 tensor [B,1,H,W] in [-1,1]."""
    import torch

    t = torch.as_tensor(np.asarray(a)) if not isinstance(a, torch.Tensor) else a
    if t.dim() == 2:
        t = t[None]
    t = t.to(device=device, dtype=torch.float32)
    return (t / 127.5 - 1.0)[:, None]


def normalise_intensity(img: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> np.ndarray:
    """float array -> float in [0,1] by a robust (percentile) window.

    Sources differ wildly in contrast (the Hannover films are washed out, ieee8023 images come from
    papers); a per-image percentile stretch removes most of that without learning anything, and
    1-in-200 outliers (burnt-in text, collimator edges) don't set the scale.
    """
    img = np.asarray(img, dtype=np.float64)
    lo, hi = np.percentile(img, [low_pct, high_pct])
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        return np.zeros(img.shape, dtype=np.float32)
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def square_resize(img01: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Centre-crop to a square and resize with LANCZOS (as the reference data was made) -> uint8."""
    from PIL import Image

    h, w = img01.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = img01[top : top + s, left : left + s]
    # Resize in 16-bit precision so 12-bit DICOM detail survives until the final rounding.
    im = Image.fromarray((crop * 65535.0).round().astype(np.uint16).astype(np.int32), mode="I")
    im = im.convert("F").resize((size, size), Image.Resampling.LANCZOS)
    out = np.asarray(im, dtype=np.float64) / 65535.0
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def prepare(img: np.ndarray, size: int = IMAGE_SIZE, *, normalise: bool = True) -> np.ndarray:
    """Any 2-D grayscale array (already display-oriented: high = bright) -> uint8 [size,size]."""
    img = np.asarray(img)
    if normalise:
        img01 = normalise_intensity(img)
    else:
        img01 = np.asarray(img, dtype=np.float32) / 255.0
    return square_resize(img01, size)


def grid(images_u8: np.ndarray, ncol: int, pad: int = 2, value: int = 255) -> np.ndarray:
    """uint8 [N,H,W] -> one uint8 mosaic with ``ncol`` columns (for previews and training samples)."""
    n, h, w = images_u8.shape
    nrow = (n + ncol - 1) // ncol
    out = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad), value, dtype=np.uint8)
    for i in range(n):  # a few dozen tiles: not a hot path
        r, c = divmod(i, ncol)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = images_u8[i]
    return out
