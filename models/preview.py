"""Preview grids: synthetic images per condition with their Grad-CAM heatmaps underneath.

Used for runs/grid.png (`xraysynth preview`); a released dataset's preview.png is drawn by the worker
(workers/preview.py). Full-colour overlays only live in previews; stored heatmaps stay single-channel.
"""

from __future__ import annotations

import numpy as np
import torch

from .gradcam import gradcam_batch
from .imaging import to_uint8
from .latents import latent_batch


def colormap(h: np.ndarray) -> np.ndarray:
    """[...,] floats in [0,1] -> [..., 3] uint8, a blue-cyan-yellow-red ramp (jet-like, no matplotlib)."""
    h = np.clip(np.asarray(h, dtype=np.float32), 0, 1)
    r = np.clip(1.5 - np.abs(4 * h - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * h - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * h - 1), 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


def overlay(images_u8: np.ndarray, heatmaps: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 [B,H,W] + heatmaps [B,h,w] in [0,1] -> RGB uint8 [B,H,W,3] (heatmap upsampled, nearest)."""
    b, hh, ww = images_u8.shape
    rep = hh // heatmaps.shape[1]
    up = np.repeat(np.repeat(heatmaps, rep, axis=1), rep, axis=2)[:, :hh, :ww]
    gray = np.repeat(images_u8[..., None], 3, axis=-1).astype(np.float32)
    return (gray * (1 - alpha) + colormap(up).astype(np.float32) * alpha).astype(np.uint8)


def preview_grid(bundle, conditions: list[str] | None = None, per_condition: int = 6, seed: int = 0,
                 heatmaps: bool = True, pad: int = 2) -> np.ndarray:
    """RGB uint8 mosaic: one block per condition (a row of images, their heatmaps beneath)."""
    conditions = conditions or list(bundle.conditions)
    names = [c for c in conditions for _ in range(per_condition)]
    y = bundle.condition_vectors(names)
    z = torch.from_numpy(latent_batch(seed, np.arange(len(names)), 0, bundle.nz)).to(bundle.device)
    with torch.no_grad():
        x = bundle.generator(z, y)
    imgs = to_uint8(x)
    rows = [np.repeat(imgs[..., None], 3, axis=-1)]
    if heatmaps:
        idx = torch.tensor([bundle.conditions.index(n) for n in names], device=bundle.device)
        r = gradcam_batch(bundle.classifier, x, idx, out_size=32)
        rows.append(overlay(imgs, r.heatmaps.cpu().numpy()))
    h, w = imgs.shape[1:]
    band = len(rows)
    out = np.full((len(conditions) * (band * (h + pad) + 4 * pad) + pad, per_condition * (w + pad) + pad, 3), 255, np.uint8)
    for ci in range(len(conditions)):
        top = pad + ci * (band * (h + pad) + 4 * pad)
        for j in range(per_condition):
            i = ci * per_condition + j
            left = pad + j * (w + pad)
            for r, tiles in enumerate(rows):
                out[top + r * (h + pad): top + r * (h + pad) + h, left: left + w] = tiles[i]
    return out


def save_preview(bundle, path, **kw) -> None:
    from PIL import Image, ImageDraw

    img = preview_grid(bundle, **kw)
    conditions = kw.get("conditions") or list(bundle.conditions)
    # a label column on the left so a reviewer knows which block is which condition
    label_w = 130
    canvas = Image.new("RGB", (img.shape[1] + label_w, img.shape[0]), "white")
    canvas.paste(Image.fromarray(img), (label_w, 0))
    draw = ImageDraw.Draw(canvas)
    block = (img.shape[0] - 2) // len(conditions)
    for ci, c in enumerate(conditions):
        draw.text((4, 2 + ci * block + block // 2 - 6), c, fill=(0, 0, 0))
    canvas.save(path)
