"""Differentiable augmentation (DiffAugment, Zhao et al. 2020) for GAN training on few images.

The same random transform family is applied to real and generated images before every
discriminator call, in D's step and in G's, so D never sees an un-augmented image and G is not
taught to produce the augmentations. Randomness comes from the step's generator: a resumed run
draws the same transforms. Policies (comma-separated):

* ``translation`` -- integer shift of up to ``shift`` px, padded with -1 (air), no flips (chest
  anatomy is not left-right symmetric);
* ``cutout`` -- one square of half the image side per image set to 0 (mid grey), as the paper does;
* ``color`` -- brightness (add U(-0.5, 0.5)) and contrast (scale the deviation from the image mean
  by U(0.5, 1.5)); grayscale images have no saturation term.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

POLICIES = ("translation", "cutout", "color")


def parse_policy(policy: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in policy.split(",") if p.strip()) if policy else ()
    unknown = [p for p in parts if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown}; choose from {', '.join(POLICIES)}")
    return parts


def translate(x: torch.Tensor, max_shift: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """Random integer shift of each image by up to ``max_shift`` px, padding with -1 (air)."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    shifts = torch.randint(-max_shift, max_shift + 1, (b, 2), generator=gen).to(x.device, x.dtype)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    theta[:, 0, 2] = shifts[:, 0] * 2.0 / w
    theta[:, 1, 2] = shifts[:, 1] * 2.0 / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1.0, grid, mode="nearest", padding_mode="zeros", align_corners=False) - 1.0


def cutout(x: torch.Tensor, gen: torch.Generator | None = None, ratio: float = 0.5) -> torch.Tensor:
    """Zero one random ``ratio``-sized square per image (the square may run off the border)."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), generator=gen).to(x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), generator=gen).to(x.device)
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    top, left = cy - ch // 2, cx - cw // 2
    inside = (ys >= top) & (ys < top + ch) & (xs >= left) & (xs < left + cw)
    return x * (~inside)[:, None].to(x.dtype)


def color(x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    b = x.shape[0]
    brightness = (torch.rand(b, 1, 1, 1, generator=gen) - 0.5).to(x.device, x.dtype)
    contrast = (torch.rand(b, 1, 1, 1, generator=gen) + 0.5).to(x.device, x.dtype)
    x = x + brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * contrast + mean


def diff_augment(x: torch.Tensor, policy: tuple[str, ...], shift: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """Apply ``policy`` in the paper's order (colour, translation, cutout); differentiable in ``x``."""
    if "color" in policy:
        x = color(x, gen)
    if "translation" in policy:
        x = translate(x, shift, gen)
    if "cutout" in policy:
        x = cutout(x, gen)
    return x
