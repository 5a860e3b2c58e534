"""The two feature spaces the memorisation audit compares images in.

* pixel space: the image average-pooled to 32x32 (a 4x4 box filter, so a 1-px shift at 128 px moves
  each feature by a quarter of a pixel), standardised per image (so a brightness or contrast change
  does not hide a copy) and scaled to unit length. The Euclidean distance between two such vectors
  is sqrt(2 - 2 * Pearson correlation): 0 for a copy, ~1.4 for unrelated images.
* embedding space: the condition classifier's penultimate features (``classifier.embed``), L2
  normalised, so the distance is sqrt(2 - 2 * cosine similarity).

Both live in [0, 2] and both are unit vectors, so a nearest-neighbour search is a matrix product.

**Shift tolerance.** Training uses small random shifts, so a memorised image may come back moved
by a pixel or two, and a 1-px shift of a sharp edge (collimator border, burnt-in text) still moves
32 px box-filtered features noticeably. The pixel distance of a query is therefore the smallest
over the query shifted by each of ``SHIFTS`` (-1, 0, +1 px in each axis, edges replicated); on
the real training set this takes a 1-px-shifted copy from a normalised score of up to ~0.6 down to
<= ~0.26, and catches 2-px shifts too, while the nearest-stranger distances barely move.
"""

from __future__ import annotations

import numpy as np

PIXEL_SIZE = 32  # side of the down-sampled image the pixel space uses
EMBED_BATCH = 256  # classifier batch when embedding a training set on CPU
MIN_CONTRAST = 1.0  # grey levels (std of the 32 px image) below which an image counts as flat
SHIFTS: tuple[tuple[int, int], ...] = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
NO_SHIFT: tuple[tuple[int, int], ...] = ((0, 0),)


def shift_images(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Move uint8 [B,H,W] images down by dy and right by dx pixels, replicating the edge."""
    if dy == 0 and dx == 0:
        return a
    m = max(abs(dy), abs(dx))
    h, w = a.shape[1:]
    p = np.pad(a, ((0, 0), (m, m), (m, m)), mode="edge")
    return p[:, m - dy : m - dy + h, m - dx : m - dx + w]


def pixel_features(pixels_uint8) -> np.ndarray:
    """uint8 [B,128,128] (numpy or tensor) -> float32 [B, 32*32] unit vectors (see module doc).

    An (almost) flat image - contrast under MIN_CONTRAST grey levels at 32 px - has no structure to
    compare; standardising it would only amplify rounding noise. It maps to the zero vector, which
    the search treats as "no evidence": distance sqrt(2) (uncorrelated) to everything.
    """
    a = as_uint8_images(pixels_uint8)
    b, h, w = a.shape
    if h % PIXEL_SIZE or w % PIXEL_SIZE:
        raise ValueError(f"image side {h}x{w} is not a multiple of {PIXEL_SIZE}")
    kh, kw = h // PIXEL_SIZE, w // PIXEL_SIZE
    f = a.astype(np.float32).reshape(b, PIXEL_SIZE, kh, PIXEL_SIZE, kw).mean(axis=(2, 4)).reshape(b, -1)
    f -= f.mean(axis=1, keepdims=True)
    std = f.std(axis=1, keepdims=True)
    f = np.where(std >= MIN_CONTRAST, f / np.maximum(std, MIN_CONTRAST), 0.0).astype(np.float32)
    return f / np.float32(np.sqrt(f.shape[1]))


def as_uint8_images(pixels_uint8) -> np.ndarray:
    """numpy or tensor uint8 [B,H,W] (or one [H,W]) -> numpy [B,H,W]."""
    a = np.asarray(pixels_uint8.cpu() if hasattr(pixels_uint8, "cpu") else pixels_uint8)
    if a.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {a.dtype}")
    return a[None] if a.ndim == 2 else a


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(n > 1e-12, x / np.maximum(n, 1e-12), 0.0).astype(np.float32)


def classifier_embeddings(classifier, pixels_uint8: np.ndarray, *, batch_size: int = EMBED_BATCH) -> np.ndarray:
    """uint8 [N,128,128] -> L2-normalised ``classifier.embed`` float32 [N, D], batched, no grad.

    Runs on the classifier's device; the result comes back to CPU numpy.
    """
    import torch

    # lazy: loaded on first use, so importing models.privacy stays torch-free
    from models.imaging import from_uint8

    param = next(classifier.parameters())
    out = []
    was_training = classifier.training
    classifier.eval()
    try:
        with torch.inference_mode():
            for s in range(0, len(pixels_uint8), batch_size):
                x = from_uint8(pixels_uint8[s : s + batch_size], device=param.device)
                out.append(classifier.embed(x).float().cpu().numpy())
    finally:
        classifier.train(was_training)
    if not out:
        return np.zeros((0, getattr(classifier, "embed_dim", 0)), dtype=np.float32)
    return l2_normalise(np.concatenate(out))
