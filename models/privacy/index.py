"""The training-set index (hospital zone, one per model version) and its nearest-neighbour search.

For every training image the index holds its 32 px standardised pixels and its L2-normalised
classifier embedding (see ``features.py``), its patient id, image id, source and row in the
training set.

**Score.** A query's distance to a training image is measured in both spaces (the pixel distance
is the smallest over the query shifted by -1/0/+1 px, see ``features.SHIFTS``) and each distance
is divided by that space's *scale*: the median, over the training images, of the distance from an
image to its nearest image of a *different* patient. So in either space 1.0 means "as close as a
typical image's nearest stranger" and 0 means identical. The score of a pair is the smaller of the
two normalised distances (a copy in either space is a copy), and a query's score is the smallest
over the whole index. ``Calibration`` turns scores into a flag threshold.

**Search.** Both spaces hold unit vectors, so ||q - x||^2 = |q|^2 + |x|^2 - 2 q.x: one matrix
product per (query chunk, index chunk, shift), a running best per query, no Python loop per image.
Chunks keep memory at ~QUERY_CHUNK x INDEX_CHUNK floats whatever the index size. Matrix products
may run in reduced precision (TF32 on GPUs), so the distance to the chosen row is recomputed
exactly (elementwise) afterwards: a copy reads as distance ~0, not ~0.05.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.privacy.features import (
    NO_SHIFT,
    SHIFTS,
    as_uint8_images,
    pixel_features,
    shift_images,
)
from models.privacy.index_reid import ReidSpaceMixin

FORMAT_VERSION = 2  # 2 adds the re-identification verifier and its vectors; 1 still loads
READABLE_VERSIONS = (1, 2)
QUERY_CHUNK = 1024
INDEX_CHUNK = 4096


SQRT2 = float(np.sqrt(2.0))


def _rank_norms(x):
    """|x|^2 for ranking by |x|^2 - 2 q.x, with zero rows (flat images) given 2: their distance to
    any unit query then ranks as sqrt(2), uncorrelated, instead of 1 (closer than most strangers)."""
    sq = (x * x).sum(1)
    return sq + (sq < 0.5).to(sq.dtype)


def rowwise_distance(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """||q_k - x_k|| per row in numpy, with the same zero-vector rule as the search."""
    d = np.linalg.norm(q - x, axis=1)
    empty = (np.einsum("ij,ij->i", q, q) < 0.5) | (np.einsum("ij,ij->i", x, x) < 0.5)
    return np.where(empty, SQRT2, d).astype(np.float32)


@dataclass
class Nearest:
    """Per query: the nearest training row (by score) and its distances. All numpy, length B."""

    index: np.ndarray  # int64 row of the PrivacyIndex (-1 if no row was allowed)
    pixel_dist: np.ndarray  # float32, pixel-space distance to that row (smallest over shifts)
    embed_dist: np.ndarray  # float32, embedding-space distance to that row
    score: np.ndarray  # float32, min(pixel_dist / pixel_scale, embed_dist / embed_scale)

    @classmethod
    def concat(cls, parts: list[Nearest]) -> Nearest:
        if not parts:
            z = np.zeros(0, np.float32)
            return cls(np.zeros(0, np.int64), z, z, z)
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("index", "pixel_dist", "embed_dist", "score")))


def classifier_digest(classifier) -> str:
    """sha256 of the classifier's weights, so an index is never used with another classifier."""
    h = hashlib.sha256()
    for name, t in sorted(classifier.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


class PrivacyIndex(ReidSpaceMixin):
    """Training-set features for the memorisation audit. Arrays are numpy on the host; ``to(device)``
    picks where the search runs (torch tensors are made lazily, so importing or loading never
    touches CUDA).

    ``pixel_scale``/``embed_scale`` are computed from the index itself when not given; that needs
    ``source_images`` (the uint8 images the pixel rows were made from) unless ``shifts`` is
    ``NO_SHIFT``, because shifted queries need pixels, not features.
    """

    def __init__(
        self,
        *,
        pixels: np.ndarray,
        embeddings: np.ndarray,
        patient_ids,
        image_ids=None,
        rows=None,
        sources=None,
        pixel_scale: float | None = None,
        embed_scale: float | None = None,
        shifts=SHIFTS,
        meta: dict | None = None,
        source_images: np.ndarray | None = None,
        reid: np.ndarray | None = None,
        reid_payload: dict | None = None,
        holdout_reid: np.ndarray | None = None,
        dcr_rows: np.ndarray | None = None,
    ):
        self.pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        n = len(self.pixels)
        if len(self.embeddings) != n:
            raise ValueError(f"{n} pixel rows but {len(self.embeddings)} embedding rows")
        self.patient_ids = np.asarray(patient_ids, dtype=str)
        self.image_ids = np.asarray(image_ids if image_ids is not None else [str(i) for i in range(n)], dtype=str)
        self.rows = np.asarray(rows if rows is not None else np.arange(n), dtype=np.int64)
        self.sources = np.asarray(sources if sources is not None else [""] * n, dtype=str)
        for name in ("patient_ids", "image_ids", "rows", "sources"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {n} images")
        self.shifts = tuple((int(dy), int(dx)) for dy, dx in shifts)
        if (0, 0) not in self.shifts:
            raise ValueError("shifts must include (0, 0)")
        # Integer patient codes: the masks of the self-search compare ints, not strings.
        self.patient_codes = np.unique(self.patient_ids, return_inverse=True)[1].astype(np.int64)
        self.meta = dict(meta or {})
        self.device = "cpu"
        self._tensors: dict | None = None
        if pixel_scale is None or embed_scale is None:
            pixel_scale, embed_scale = self._stranger_scales(source_images)
        self.pixel_scale = float(pixel_scale)
        self.embed_scale = float(embed_scale)
        # Re-identification space (optional): verifier vectors of the rows, of held-out (val+test)
        # images for the DCR share, and a size-matched random subset of rows to compare them with.
        self.reid = None if reid is None else np.ascontiguousarray(reid, dtype=np.float32)
        self.reid_payload = reid_payload
        self.holdout_reid = None if holdout_reid is None else np.ascontiguousarray(holdout_reid, dtype=np.float32)
        self.dcr_rows = None if dcr_rows is None else np.asarray(dcr_rows, dtype=np.int64)
        if self.reid is not None and len(self.reid) != n:
            raise ValueError(f"{len(self.reid)} re-identification rows for {n} images")
        self._reid_space = None

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def embed_dim(self) -> int:
        return self.embeddings.shape[1]

    # -- torch side ---------------------------------------------------------------------------

    def to(self, device) -> PrivacyIndex:
        """Run searches on ``device`` (e.g. "cuda"); the tensors move on the next search."""
        self.device = str(device)
        self._tensors = None
        return self

    def _t(self):
        import torch

        if self._tensors is None:
            dev = torch.device(self.device)
            p = torch.from_numpy(self.pixels).to(dev)
            e = torch.from_numpy(self.embeddings).to(dev)
            self._tensors = {
                "pixel": (p, _rank_norms(p)),
                "embed": (e, _rank_norms(e)),
                "codes": torch.from_numpy(self.patient_codes).to(dev),
            }
        return self._tensors

    def _search(self, space: str, q, *, q_codes=None, q_rows=None, mode: str = "all"):
        """Nearest row per query in one space, one shift -> (row LongTensor [b], exact distance [b]).

        mode "all": every row; "different": only rows of another patient (q_codes);
        "same": only rows of the same patient other than the query's own row (q_rows).
        A query with no allowed row gets row -1 and distance inf.
        """
        import torch

        t = self._t()
        x, xsq = t[space]
        codes = t["codes"]
        best = torch.full((q.shape[0],), float("inf"), device=x.device)
        arg = torch.full((q.shape[0],), -1, dtype=torch.long, device=x.device)
        for xs in range(0, x.shape[0], INDEX_CHUNK):
            xe = min(xs + INDEX_CHUNK, x.shape[0])
            # |q|^2 is the same for every row, so rank by |x|^2 - 2 q.x.
            d = xsq[None, xs:xe] - 2.0 * (q @ x[xs:xe].T)
            if mode == "different":
                d.masked_fill_(q_codes[:, None] == codes[None, xs:xe], float("inf"))
            elif mode == "same":
                own = torch.arange(xs, xe, device=x.device)
                d.masked_fill_((q_codes[:, None] != codes[None, xs:xe]) | (q_rows[:, None] == own[None, :]), float("inf"))
            v, i = d.min(dim=1)
            better = v < best
            best = torch.where(better, v, best)
            arg = torch.where(better, i + xs, arg)
        return arg, self._exact(space, q, arg)

    def _exact(self, space: str, q, rows):
        """Elementwise ||q_b - x_rows[b]|| (inf where rows is -1): no matmul rounding near 0."""
        import torch

        x = self._t()[space][0][rows.clamp(min=0)]
        d = (q - x).pow(2).sum(1).sqrt()
        # A zero vector (flat image, see features.pixel_features) is evidence of nothing: sqrt(2).
        empty = (q.pow(2).sum(1) < 0.5) | (x.pow(2).sum(1) < 0.5)
        d = torch.where(empty, torch.full_like(d, SQRT2), d)
        return torch.where(rows >= 0, d, torch.full_like(d, float("inf")))

    def _shifted(self, images_uint8) -> list:
        """Pixel features of the images moved by each of ``self.shifts``, as tensors on the device."""
        import torch

        dev = torch.device(self.device)
        return [torch.from_numpy(pixel_features(shift_images(images_uint8, dy, dx))).to(dev) for dy, dx in self.shifts]

    def _pixel_search(self, qs: list, **mask):
        """Best over shifts: each shift is a separate search, the smallest exact distance wins."""
        import torch

        best_row, best_d = None, None
        for q in qs:
            r, d = self._search("pixel", q, **mask)
            if best_d is None:
                best_row, best_d = r, d
            else:
                better = d < best_d
                best_row, best_d = torch.where(better, r, best_row), torch.where(better, d, best_d)
        return best_row, best_d

    def _nearest_chunk(self, qs: list, qe, **mask) -> Nearest:
        """Combine the spaces: score = min over spaces of (distance / scale); the row is the nearest
        row of the winning space; both distances are reported for that row."""
        import torch

        ip, dp = self._pixel_search(qs, **mask)
        ie, de = self._search("embed", qe, **mask)
        sp, se = dp / self.pixel_scale, de / self.embed_scale
        row = torch.where(sp <= se, ip, ie)
        pixel_dist = torch.stack([self._exact("pixel", q, row) for q in qs]).min(dim=0).values
        embed_dist = self._exact("embed", qe, row)
        return Nearest(
            index=row.cpu().numpy().astype(np.int64),
            pixel_dist=pixel_dist.float().cpu().numpy(),
            embed_dist=embed_dist.float().cpu().numpy(),
            score=torch.minimum(sp, se).float().cpu().numpy(),
        )

    def _queries(self, pixels_uint8, embeddings):
        import torch

        px = as_uint8_images(pixels_uint8)
        qe = torch.as_tensor(embeddings).detach().to(device=torch.device(self.device), dtype=torch.float32)
        if qe.dim() != 2 or qe.shape[1] != self.embed_dim:
            raise ValueError(f"embeddings must be [B,{self.embed_dim}], got {tuple(qe.shape)}")
        if qe.shape[0] != px.shape[0]:
            raise ValueError(f"{px.shape[0]} images but {qe.shape[0]} embeddings")
        return px, torch.nn.functional.normalize(qe, dim=1)

    # -- public API ---------------------------------------------------------------------------

    def nearest(self, pixels_uint8, embeddings) -> Nearest:
        """Nearest training image of each query (uint8 [B,128,128] + raw or normalised [B,D])."""
        import torch

        px, qe = self._queries(pixels_uint8, embeddings)
        parts = []
        with torch.inference_mode():
            for s in range(0, len(px), QUERY_CHUNK):
                parts.append(self._nearest_chunk(self._shifted(px[s : s + QUERY_CHUNK]), qe[s : s + QUERY_CHUNK]))
        return Nearest.concat(parts)

    def nearest_by_space(self, pixels_uint8, embeddings) -> tuple[np.ndarray, np.ndarray]:
        """Each query's smallest raw distance in each space separately -> (pixel [B], embed [B])."""
        import torch

        px, qe = self._queries(pixels_uint8, embeddings)
        dps, des = [], []
        with torch.inference_mode():
            for s in range(0, len(px), QUERY_CHUNK):
                dps.append(self._pixel_search(self._shifted(px[s : s + QUERY_CHUNK]))[1].float().cpu().numpy())
                des.append(self._search("embed", qe[s : s + QUERY_CHUNK])[1].float().cpu().numpy())
        return np.concatenate(dps) if dps else np.zeros(0), np.concatenate(des) if des else np.zeros(0)

    def _self_pixel_queries(self, source_images, s: int, e: int) -> list:

        if source_images is not None:
            return self._shifted(np.asarray(source_images)[s:e])
        if self.shifts != NO_SHIFT:
            raise ValueError("searching the index against itself with shifts needs its source images")
        return [self._t()["pixel"][0][s:e]]

    def self_nearest(self, mode: str, source_images: np.ndarray | None = None) -> Nearest:
        """Each training image against the rest of the index, for calibration.

        mode "different": nearest image of another patient (what a new patient's image would score);
        mode "same": nearest *other* image of the same patient (row -1, score inf if there is none).
        ``source_images``: the uint8 images of the index rows, in row order (needed for shifts).
        """
        import torch

        if mode not in ("different", "same"):
            raise ValueError(f"mode must be different|same, not {mode!r}")
        t = self._t()
        parts = []
        with torch.inference_mode():
            for s in range(0, len(self), QUERY_CHUNK):
                e = min(s + QUERY_CHUNK, len(self))
                rows = torch.arange(s, e, device=t["codes"].device)
                qs = self._self_pixel_queries(source_images, s, e)
                parts.append(self._nearest_chunk(qs, t["embed"][0][s:e], q_codes=t["codes"][s:e], q_rows=rows, mode=mode))
        return Nearest.concat(parts)

    def pair_scores(self, a: np.ndarray, b: np.ndarray, source_images: np.ndarray | None = None) -> np.ndarray:
        """Score of explicit pairs of index rows (a[k] as the query, b[k] as the index row)."""
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        if source_images is None:
            if self.shifts != NO_SHIFT:
                raise ValueError("pair scores with shifts need the index's source images")
            sp = rowwise_distance(self.pixels[a], self.pixels[b]) / self.pixel_scale
        else:
            # Shifted features once per distinct query row, not once per pair.
            uniq, inv = np.unique(a, return_inverse=True)
            imgs = as_uint8_images(np.asarray(source_images)[uniq])
            sp = np.full(len(a), np.inf, dtype=np.float32)
            for dy, dx in self.shifts:
                f = pixel_features(shift_images(imgs, dy, dx))
                sp = np.minimum(sp, rowwise_distance(f[inv], self.pixels[b]) / self.pixel_scale)
        de = rowwise_distance(self.embeddings[a], self.embeddings[b])
        return np.minimum(sp, de / self.embed_scale).astype(np.float32)

    def pair_scores_pixels(self, images_uint8, rows) -> np.ndarray:
        """Normalised pixel distance (best over shifts) of image k to index row rows[k]."""
        imgs, rows = as_uint8_images(images_uint8), np.asarray(rows, dtype=np.int64)
        d = [rowwise_distance(pixel_features(shift_images(imgs, dy, dx)), self.pixels[rows]) for dy, dx in self.shifts]
        return (np.min(d, axis=0) / self.pixel_scale).astype(np.float32)

    def _stranger_scales(self, source_images) -> tuple[float, float]:
        """Median distance to the nearest different-patient image, per space (see module doc)."""
        import torch

        if len(np.unique(self.patient_codes)) < 2:
            return 1.0, 1.0  # nothing to compare with; scores are then raw distances
        t = self._t()
        dps, des = [], []
        with torch.inference_mode():
            for s in range(0, len(self), QUERY_CHUNK):
                e = min(s + QUERY_CHUNK, len(self))
                mask = {"q_codes": t["codes"][s:e], "mode": "different"}
                dps.append(self._pixel_search(self._self_pixel_queries(source_images, s, e), **mask)[1])
                des.append(self._search("embed", t["embed"][0][s:e], **mask)[1])
        # A floor keeps a degenerate set (all images equal) from dividing by zero.
        return max(float(torch.cat(dps).median()), 1e-3), max(float(torch.cat(des).median()), 1e-3)

    # -- persistence --------------------------------------------------------------------------

    def save(self, path) -> None:
        """One .npz, no pickled objects (strings are numpy unicode, meta is a JSON string)."""
        buf = io.BytesIO()
        np.savez(
            buf,
            format_version=np.int64(FORMAT_VERSION),
            pixels=self.pixels,
            embeddings=self.embeddings,
            patient_ids=self.patient_ids,
            image_ids=self.image_ids,
            rows=self.rows,
            sources=self.sources,
            shifts=np.asarray(self.shifts, dtype=np.int64).reshape(-1, 2),
            pixel_scale=np.float64(self.pixel_scale),
            embed_scale=np.float64(self.embed_scale),
            meta_json=np.str_(json.dumps(self.meta, sort_keys=True)),
            **self._reid_arrays(),
        )
        data = buf.getvalue()
        if hasattr(path, "write"):
            path.write(data)
        else:
            Path(path).write_bytes(data)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        self.save(buf)
        return buf.getvalue()

    @classmethod
    def load(cls, path_or_bytes) -> PrivacyIndex:
        src = path_or_bytes
        if isinstance(src, (bytes, bytearray, memoryview)):
            src = io.BytesIO(bytes(src))
        with np.load(src, allow_pickle=False) as z:
            version = int(z["format_version"])
            if version not in READABLE_VERSIONS:
                raise ValueError(f"privacy index format {version}, this code reads {READABLE_VERSIONS}")
            return cls(
                pixels=z["pixels"],
                embeddings=z["embeddings"],
                patient_ids=z["patient_ids"],
                image_ids=z["image_ids"],
                rows=z["rows"],
                sources=z["sources"],
                shifts=[tuple(s) for s in z["shifts"].tolist()],
                pixel_scale=float(z["pixel_scale"]),
                embed_scale=float(z["embed_scale"]),
                meta=json.loads(str(z["meta_json"])),
                **cls._reid_from(z),
            )
