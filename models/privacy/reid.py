"""Patient re-identification verifiers: spaces where "closer" means "more likely the same patient".

A space turns images into unit vectors. An index image gives one vector; a query gives ``S``
vectors (variants) and its distance to an index image is the smallest over them, so a registration
search (shifts, rotations) and a learnt projection (one variant) share one nearest-neighbour code
path. Both spaces below read pixels only, so a verifier travels as a few arrays (in the bundle and
in the privacy index) and the filter needs no network beside the generator to run it.

* ``NCCSpace`` (kind "ncc"): registered normalised cross-correlation, the baseline. 32 px
  box-pooled pixels standardised per image; the query is moved by shifts of up to 4 px and
  rotations of +-4 degrees; distance sqrt(2 - 2 r), r the best Pearson correlation.
* ``LinearSpace`` (kind "linear"): a verifier *fitted on the training split's patients*: 32 px
  standardised pixels, PCA-whitened, then projected onto the directions in which images of one
  patient vary least relative to images in general (within-patient whitening, i.e. Fisher's LDA
  with patients as classes), unit length. Closed form: no training loop, deterministic.

Both are brightness/contrast invariant by construction (per-image standardisation). A third kind,
"cnn" (``reid_cnn.CNNSpace``, trained by ``reid_train``), is a learnt convolutional embedding; its
payload carries an fp16 state dict and ``space_from_payload`` below rebuilds it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from models.imaging import from_uint8

SIZE = 32
NCC_SHIFTS = tuple((dy, dx) for dy in (-4, -2, 0, 2, 4) for dx in (-4, -2, 0, 2, 4))  # 128 px pixels
NCC_ANGLES = (-4.0, 0.0, 4.0)  # degrees
PCA_DIMS = 100  # chosen on held-back training patients (ES AUC 0.60 at 100 vs 0.58 at 200, 0.55 at 400)
LDA_DIMS = 64


def standardised_pixels(pixels_uint8, size: int = SIZE) -> np.ndarray:
    """uint8 [B,128,128] -> float32 [B, size*size], zero mean and unit length per image (flat -> 0)."""
    x = from_uint8(np.asarray(pixels_uint8))
    return _unit_rows(F.adaptive_avg_pool2d(x, size).flatten(1))


def _unit_rows(f: torch.Tensor) -> np.ndarray:
    f = f - f.mean(1, keepdim=True)
    n = f.norm(dim=1, keepdim=True)
    return torch.where(n > 1e-6, f / n.clamp(min=1e-6), torch.zeros_like(f)).numpy().astype(np.float32)


class NCCSpace:
    """Baseline: index = standardised 32 px pixels; query variants = every (rotation, shift)."""

    kind = "ncc"
    name = "registered NCC (32 px, shifts <= 4 px, rotations +-4 deg)"

    def __init__(self, size: int = SIZE, shifts=NCC_SHIFTS, angles=NCC_ANGLES):
        self.size, self.shifts, self.angles = int(size), tuple(map(tuple, shifts)), tuple(angles)

    def index(self, pixels_uint8) -> np.ndarray:
        return standardised_pixels(pixels_uint8, self.size)

    def query(self, pixels_uint8) -> np.ndarray:
        """[S, B, D], S = rotations x shifts."""
        x = from_uint8(np.asarray(pixels_uint8))
        step = 2.0 / x.shape[-1]  # one pixel in affine_grid's [-1,1] units
        out = []
        for a in self.angles:
            r = np.deg2rad(a)
            for dy, dx in self.shifts:
                theta = torch.tensor([[np.cos(r), -np.sin(r), dx * step], [np.sin(r), np.cos(r), dy * step]],
                                     dtype=torch.float32)
                grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
                moved = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
                out.append(_unit_rows(F.adaptive_avg_pool2d(moved, self.size).flatten(1)))
        return np.stack(out)

    def payload(self) -> dict:
        return {"kind": self.kind, "size": self.size, "shifts": [list(s) for s in self.shifts], "angles": list(self.angles)}


class LinearSpace:
    """A fitted linear verifier: unit(standardised_pixels(x) @ projection - offset)."""

    kind = "linear"
    name = "learnt linear verifier (32 px, PCA-whitened within-patient LDA)"

    def __init__(self, projection: np.ndarray, offset: np.ndarray, size: int = SIZE, info: dict | None = None):
        self.projection = np.asarray(projection, dtype=np.float32)
        self.offset = np.asarray(offset, dtype=np.float32).reshape(-1)
        self.size, self.info = int(size), dict(info or {})

    def index(self, pixels_uint8) -> np.ndarray:
        e = standardised_pixels(pixels_uint8, self.size) @ self.projection - self.offset
        n = np.linalg.norm(e, axis=1, keepdims=True)
        return np.where(n > 1e-9, e / np.maximum(n, 1e-9), 0.0).astype(np.float32)

    def query(self, pixels_uint8) -> np.ndarray:
        return self.index(pixels_uint8)[None]

    def payload(self) -> dict:
        return {"kind": self.kind, "size": self.size, "projection": self.projection.astype(np.float16),
                "offset": self.offset.astype(np.float32), "info": self.info}


def fit_linear(pixels_uint8, patient_ids, *, pca_dims: int = PCA_DIMS, lda_dims: int = LDA_DIMS,
               ridge: float = 1e-2, seed: int = 0, size: int = SIZE) -> LinearSpace:
    """Fit on training images (patients with one image still shape the PCA; patients with >= 2
    give the within-patient scatter). Raises if no patient has two images."""
    x = standardised_pixels(pixels_uint8, size).astype(np.float64)
    pid = np.asarray(patient_ids).astype(str)
    codes, cnt = np.unique(pid, return_inverse=True, return_counts=True)[1:]
    multi = cnt[codes] >= 2
    if multi.sum() < 2:
        raise ValueError("fitting a verifier needs at least one patient with two or more images")
    mu = x.mean(0)
    z = torch.from_numpy(x - mu)
    k = int(min(pca_dims, z.shape[0] - 1, z.shape[1]))
    torch.manual_seed(seed)
    _, s, v = torch.pca_lowrank(z, q=k, center=False, niter=4)
    whiten = (v / s * np.sqrt(len(z))).numpy()  # [D, k]: unit variance along each component
    y = (x - mu) @ whiten
    cm = codes[multi]
    uc, ci = np.unique(cm, return_inverse=True)
    means = np.zeros((len(uc), k))
    np.add.at(means, ci, y[multi])
    means /= np.bincount(ci)[:, None]
    w = y[multi] - means[ci]
    sw = w.T @ w / len(w) + ridge * np.eye(k)
    ev, evec = np.linalg.eigh(sw)  # ascending: the first directions vary least within a patient
    m = int(min(lda_dims, k))
    lda = evec[:, :m] / np.sqrt(ev[:m])
    proj = whiten @ lda
    info = {"pca_dims": k, "lda_dims": m, "ridge": ridge, "seed": seed, "n_images": int(len(x)),
            "n_patients": int(len(cnt)), "n_multi_image_patients": int((cnt >= 2).sum()),
            "n_multi_image_images": int(multi.sum())}
    return LinearSpace(proj, mu @ proj, size, info)


def space_from_payload(p: dict):
    """The verifier a bundle or a privacy index carries (see ``payload()``)."""
    if p is None:
        return None
    kind = str(p.get("kind"))
    if kind == "ncc":
        return NCCSpace(int(p.get("size", SIZE)), [tuple(s) for s in p.get("shifts", NCC_SHIFTS)], p.get("angles", NCC_ANGLES))
    if kind == "linear":
        as_np = lambda t: t.float().numpy() if hasattr(t, "numpy") and hasattr(t, "float") else np.asarray(t)  # noqa: E731
        return LinearSpace(as_np(p["projection"]), as_np(p["offset"]), int(p.get("size", SIZE)), dict(p.get("info") or {}))
    if kind == "cnn":
        # lazy: only a bundle with a CNN verifier needs the network code
        from models.privacy.reid_cnn import cnn_from_payload

        return cnn_from_payload(p)
    raise ValueError(f"unknown verifier kind {kind!r}")


def bundle_verifier(space) -> dict:
    """A space's payload with torch tensors instead of numpy arrays (``torch.load(weights_only=True)``
    reads a bundle without unpickling numpy)."""
    p = space.payload()
    return {k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v) for k, v in p.items()}
