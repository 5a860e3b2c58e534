"""The privacy filter the worker runs on every generated batch, and the regenerate loop.

Two checks, each with its own calibrated threshold: the **copy** check (score against the training
index under ``calibration.threshold``) and, where the index carries a verifier, the
**re-identification** check (verifier distance to the nearest training image under
``calibration.reid_threshold``). An image flagged by either is dropped and regenerated with the next attempt number (same image index, so the latent is
``latent_batch(seed, i, attempt)``): the output stays a pure function of (model, seed, index).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class MemorisationError(RuntimeError):
    """An image stayed too close to the training set after every allowed attempt. The message
    carries image indices and scores only - never pixels - so it can go into a dataset's error."""

    def __init__(self, image_indices, scores, nearest_image_ids, max_attempts: int, checks=None):
        self.image_indices = [int(i) for i in image_indices]
        self.scores = [float(s) for s in scores]
        self.nearest_image_ids = [str(s) for s in nearest_image_ids]
        self.checks = [str(c) for c in checks] if checks is not None else ["copy"] * len(self.image_indices)
        shown = ", ".join(f"{i} ({'copy score ' + format(s, '.3f') if c == COPY else 'same patient by the verifier'})"
                          for i, s, c in list(zip(self.image_indices, self.scores, self.checks))[:10])
        more = f" and {len(self.image_indices) - 10} more" if len(self.image_indices) > 10 else ""
        super().__init__(
            f"{len(self.image_indices)} image(s) still matched a training image after {max_attempts} "
            f"attempts and were not released: image index {shown}{more}"
        )


@dataclass
class FilterResult:
    keep: np.ndarray  # bool [B]: False = too close to a training image
    score: np.ndarray  # float32 [B]
    nearest_index: np.ndarray  # int64 [B], row of the PrivacyIndex
    nearest_patient: np.ndarray  # str [B], patient id of that row (hospital zone only)
    check: np.ndarray = None  # str [B]: "copy" | "reidentification" | "" (not flagged)
    reid_distance: np.ndarray = None  # float32 [B], inf when the index has no verifier
    reid_index: np.ndarray = None  # int64 [B], nearest row in the verifier's space (-1 if none)


COPY, REID = "copy", "reidentification"


def memorisation_filter(index, calibration, pixels_uint8, embeddings) -> FilterResult:
    nn = index.nearest(pixels_uint8, embeddings)
    copy = calibration.flagged(nn.score)
    n = len(nn.score)
    if getattr(index, "has_reid", False) and calibration.reid_threshold is not None:
        rd, ri = index.nearest_reid(pixels_uint8)
    else:
        rd, ri = np.full(n, np.inf, np.float32), np.full(n, -1, np.int64)
    reid = calibration.reid_flagged(rd)
    return FilterResult(
        keep=~copy & ~reid,
        score=nn.score,
        nearest_index=nn.index,
        nearest_patient=index.patient_ids[nn.index.clip(min=0)],
        check=np.where(copy, COPY, np.where(reid, REID, "")),
        reid_distance=rd.astype(np.float32),
        reid_index=ri.astype(np.int64),
    )


@dataclass
class Replaced:
    """What ``filter_and_replace`` hands back: every array is in the order of ``image_indices``."""

    pixels: np.ndarray  # uint8 [B,128,128], all passing the filter
    embeddings: np.ndarray  # float32 [B,D] as generate_fn returned them
    extra: object  # generate_fn's extra, per image, from the accepted attempt (dict/array/None)
    attempts: np.ndarray  # int64 [B], attempt number of the released image (0 = first try)
    score: np.ndarray  # float32 [B]
    nearest_index: np.ndarray  # int64 [B]
    nearest_patient: np.ndarray  # str [B]
    n_rejected: int  # generated images dropped in total
    n_generated: int  # generated images in total (= B + n_rejected)
    rejected_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    reid_distance: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # [B], released images
    reid_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [B]
    n_rejected_copy: int = 0  # rejections by the copy check (a copy flagged by both counts here)
    n_rejected_reid: int = 0  # rejections by the re-identification check alone
    rejected_reid_distances: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


def _take(x, sel):
    """Rows ``sel`` of an array / tensor / dict / list-of-those (None stays None)."""
    if x is None:
        return None
    if isinstance(x, dict):
        return {k: _take(v, sel) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_take(v, sel) for v in x)
    if hasattr(x, "detach"):  # torch tensor: keep it a tensor, on its device
        import torch

        return x[torch.as_tensor(sel, device=x.device)]
    return np.asarray(x)[sel]


def _put(dst, sel, src):
    """dst[sel] = src for the same nested structures (dst made by _empty_like)."""
    if dst is None:
        return
    if isinstance(dst, dict):
        for k in dst:
            _put(dst[k], sel, src[k])
    elif isinstance(dst, (list, tuple)):
        for d, s in zip(dst, src):
            _put(d, sel, s)
    elif hasattr(dst, "detach"):
        import torch

        dst[torch.as_tensor(sel, device=dst.device)] = src.to(dst.device)
    else:
        dst[sel] = np.asarray(src)


def _empty_like(x, n: int):
    if x is None:
        return None
    if isinstance(x, dict):
        return {k: _empty_like(v, n) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_empty_like(v, n) for v in x]  # lists so _put can fill in place
    if hasattr(x, "detach"):
        return x.new_zeros((n, *x.shape[1:]))
    a = np.asarray(x)
    return np.zeros((n, *a.shape[1:]), dtype=a.dtype)


def filter_and_replace(generate_fn, index, calibration, image_indices, max_attempts: int = 8) -> Replaced:
    """Generate, filter, regenerate the rejected ones with attempt + 1, until all pass.

    ``generate_fn(indices int64 [b], attempts int64 [b]) -> (pixels uint8 [b,128,128],
    embeddings [b,D], extra)`` must be deterministic in (index, attempt); ``extra`` is None or an
    array/tensor/dict/list of per-image rows (heatmaps, probabilities...) kept from the accepted
    attempt. Raises MemorisationError if an image fails all ``max_attempts`` attempts.
    """
    idx = np.asarray(image_indices, dtype=np.int64).reshape(-1)
    n = len(idx)
    attempts = np.zeros(n, dtype=np.int64)
    score = np.zeros(n, dtype=np.float32)
    nearest = np.zeros(n, dtype=np.int64)
    pixels = embeddings = extra = None
    reid_d = np.full(n, np.inf, dtype=np.float32)
    reid_i = np.full(n, -1, dtype=np.int64)
    pending = np.arange(n)
    rejected_scores, rejected_reid = [], []
    n_copy = n_reid = 0
    n_generated = 0
    while len(pending):
        px, emb, ex = generate_fn(idx[pending], attempts[pending].copy())
        px = np.asarray(px)
        emb_np = emb.detach().float().cpu().numpy() if hasattr(emb, "detach") else np.asarray(emb, dtype=np.float32)
        if pixels is None:  # allocate the outputs from the first batch's shapes
            pixels = np.zeros((n, *px.shape[1:]), dtype=np.uint8)
            embeddings = np.zeros((n, emb_np.shape[1]), dtype=np.float32)
            extra = _empty_like(ex, n)
        n_generated += len(pending)
        res = memorisation_filter(index, calibration, px, emb_np)
        ok = np.flatnonzero(res.keep)
        done = pending[ok]
        pixels[done], embeddings[done] = px[ok], emb_np[ok]
        _put(extra, done, _take(ex, ok))
        score[done], nearest[done] = res.score[ok], res.nearest_index[ok]
        reid_d[done], reid_i[done] = res.reid_distance[ok], res.reid_index[ok]
        bad = np.flatnonzero(~res.keep)
        rejected_scores.append(res.score[bad])
        rejected_reid.append(res.reid_distance[bad])
        n_copy += int((res.check[bad] == COPY).sum())
        n_reid += int((res.check[bad] == REID).sum())
        if len(bad) and attempts[pending[bad]].max() + 1 >= max_attempts:
            # Any rejected image at its last attempt fails the batch: nothing half-filtered is released.
            last = bad[attempts[pending[bad]] + 1 >= max_attempts]
            raise MemorisationError(
                idx[pending[last]], res.score[last], index.image_ids[res.nearest_index[last].clip(min=0)], max_attempts,
                checks=res.check[last],
            )
        pending = pending[bad]
        attempts[pending] += 1
    if isinstance(extra, list):
        extra = extra if not isinstance(ex, tuple) else tuple(extra)
    rej = np.concatenate(rejected_scores) if rejected_scores else np.zeros(0, np.float32)
    return Replaced(
        pixels=pixels if pixels is not None else np.zeros((0, 128, 128), np.uint8),
        embeddings=embeddings if embeddings is not None else np.zeros((0, index.embed_dim), np.float32),
        extra=extra,
        attempts=attempts,
        score=score,
        nearest_index=nearest,
        nearest_patient=index.patient_ids[nearest.clip(min=0)],
        n_rejected=int(len(rej)),
        n_generated=int(n_generated),
        rejected_scores=rej.astype(np.float32),
        reid_distance=reid_d,
        reid_index=reid_i,
        n_rejected_copy=n_copy,
        n_rejected_reid=n_reid,
        rejected_reid_distances=np.concatenate(rejected_reid).astype(np.float32) if rejected_reid else np.zeros(0, np.float32),
    )
