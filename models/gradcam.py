"""Grad-CAM (Selvaraju et al. 2017) of a named condition, batched, relative to a blank image.

Plain Grad-CAM maps ReLU(sum_k w_k A_k). For this GAP + linear head that is each location's share of
the logit, and for a condition whose logit is pushed down everywhere (most rare ones) it is zero
everywhere: an empty map. Here the activations of a blank image of the same mean grey level are
subtracted first, so the map shows where the image's content, rather than the bare field of view,
raises the condition's logit; its sum over locations is logit(image) - logit(blank) (the head is
linear in the activations). Occlusion and integrated gradients use the same kind of baseline, and it
is what the deletion test (models/faithfulness.py) fills deleted pixels with.

One forward and one backward over the whole batch give the heatmaps, the classifier's probability
for the requested condition and the penultimate embeddings (which the privacy filter reuses), so
the worker pays for the classifier once per image; the blank images' activations are a small table
computed once per classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .networks import Classifier

# A uniform image's activations depend only on its grey level: computed once per classifier at these
# many levels in [-1, 1] and interpolated (a ReLU network is piecewise linear in its input).
BLANK_LEVELS = 129


@torch.no_grad()
def blank_feature_maps(classifier: Classifier, grey: torch.Tensor, side: int = 128) -> torch.Tensor:
    """Grad-CAM-layer activations [B, K, h, w] of uniform side x side images at grey levels ``grey`` [B] in [-1, 1]."""
    table = _blank_table(classifier, grey.device, side)
    pos = ((grey.float().clamp(-1, 1) + 1) / 2) * (BLANK_LEVELS - 1)
    lo = pos.floor().long().clamp(max=BLANK_LEVELS - 2)
    frac = (pos - lo)[:, None, None, None]
    return table[lo] * (1 - frac) + table[lo + 1] * frac


def _blank_table(classifier: Classifier, device, side: int) -> torch.Tensor:
    # Keyed by the weights' in-place version counters, so a classifier trained further is recomputed.
    key = (str(device), side, sum(t._version for t in (*classifier.parameters(), *classifier.buffers())))
    cached = getattr(classifier, "_blank_table_cache", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    was_training = classifier.training
    classifier.eval()
    levels = torch.linspace(-1, 1, BLANK_LEVELS, device=device)
    with torch.autocast(device_type=torch.device(device).type, enabled=False):
        table = torch.cat([classifier.feature_map(levels[s : s + 32, None, None, None].expand(-1, 1, side, side)).float()
                           for s in range(0, BLANK_LEVELS, 32)])
    classifier.train(was_training)
    classifier._blank_table_cache = (key, table)
    return table


@dataclass
class GradcamResult:
    heatmaps: torch.Tensor  # float32 [B, out, out] in [0, 1]
    probs: torch.Tensor  # float32 [B]: sigmoid of the requested condition's logit
    embeddings: torch.Tensor  # float32 [B, D]: penultimate features


def gradcam_batch(classifier: Classifier, x: torch.Tensor, class_idx, out_size: int = 32) -> GradcamResult:
    """Heatmaps of condition ``class_idx[b]`` for image ``x[b]``; works under bf16 autocast.

    Gradients are taken with respect to the activations only (never the weights), so the
    classifier may be frozen, and the call is safe inside ``torch.no_grad``/``inference_mode``.
    """
    with torch.inference_mode(False), torch.enable_grad():
        # A tensor made under inference_mode can't enter autograd; a clone made outside it can.
        x = x.detach().clone() if x.is_inference() else x.detach()
        class_idx = torch.as_tensor(class_idx, dtype=torch.long, device=x.device).reshape(-1)
        class_idx = class_idx.clone() if class_idx.is_inference() else class_idx
        if class_idx.numel() == 1 and x.shape[0] > 1:
            class_idx = class_idx.expand(x.shape[0])
        fmap = classifier.feature_map(x)
        if not fmap.requires_grad:  # frozen weights: make the activations the leaf instead
            fmap = fmap.detach().requires_grad_(True)
        logits, emb = classifier.head(fmap)
        chosen = logits.gather(1, class_idx[:, None]).squeeze(1)
        # Samples are independent (eval-mode BN), so d(sum)/dA_b = d(logit_b)/dA_b.
        (grads,) = torch.autograd.grad(chosen.sum(), fmap)
    with torch.no_grad():
        weights = grads.float().mean(dim=(2, 3), keepdim=True)  # [B, K, 1, 1]
        acts = fmap.detach().float() - blank_feature_maps(classifier, x.float().mean(dim=(1, 2, 3)), x.shape[-1])
        cam = F.relu((weights * acts).sum(dim=1, keepdim=True))  # [B,1,h,w]
        cam = F.interpolate(cam, size=(out_size, out_size), mode="bilinear", align_corners=False)[:, 0]
        flat = cam.flatten(1)
        lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
        cam = (cam - lo[:, None, None]) / (hi - lo).clamp(min=1e-8)[:, None, None]
        probs = torch.sigmoid(chosen.detach().float())
        return GradcamResult(cam.float(), probs, emb.detach().float())
