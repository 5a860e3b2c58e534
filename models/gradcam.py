"""Grad-CAM (Selvaraju et al. 2017) of a named condition, batched.

One forward and one backward over the whole batch give the heatmaps, the classifier's probability
for the requested condition and the penultimate embeddings (which the privacy filter reuses), so
the worker pays for the classifier once per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .networks import Classifier


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
        cam = F.relu((weights * fmap.detach().float()).sum(dim=1, keepdim=True))  # [B,1,h,w]
        cam = F.interpolate(cam, size=(out_size, out_size), mode="bilinear", align_corners=False)[:, 0]
        flat = cam.flatten(1)
        lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
        cam = (cam - lo[:, None, None]) / (hi - lo).clamp(min=1e-8)[:, None, None]
        probs = torch.sigmoid(chosen.detach().float())
        return GradcamResult(cam.float(), probs, emb.detach().float())
