"""Finalise: the released preview grid, each synthetic image with its Grad-CAM heatmap underneath
(full-colour overlays only here; the release itself stores 32x32 single-channel heatmaps). A condition
whose heatmaps the model card measured as uninformative says so in its band's label."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

PREVIEW_COLUMNS = 8
TILE = 128


def band_label(condition: str, n: int, uninformative: dict[str, str] | None = None) -> str:
    """The text above a condition's band in the preview."""
    why = (uninformative or {}).get(condition)
    if why is None:
        return f"{condition}  ({n} images; heatmap below each)"
    return f"{condition}  ({n} images; heatmaps uninformative for this condition: {why})"


def _jet(x: np.ndarray) -> np.ndarray:
    """[..] in [0,1] -> RGB float in [0,1] (the familiar jet map, no matplotlib needed)."""
    x = np.clip(x, 0.0, 1.0)[..., None]
    return np.clip(1.5 - np.abs(4.0 * x - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)


def heatmap_overlay(pixels: np.ndarray, heatmap_u8: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Grayscale image + low-res heatmap -> RGB uint8 overlay (previews only; the release stores 32x32)."""
    h, w = pixels.shape
    up = np.asarray(Image.fromarray(heatmap_u8, mode="L").resize((w, h), Image.Resampling.BILINEAR), np.float32) / 255.0
    gray = np.repeat(pixels[..., None].astype(np.float32) / 255.0, 3, axis=2)
    return np.rint(255 * ((1 - alpha) * gray + alpha * _jet(up))).astype(np.uint8)


def render_preview(blocks: list[tuple[str, int]], frag: dict, columns: int = PREVIEW_COLUMNS,
                   uninformative: dict[str, str] | None = None) -> bytes:
    """One band per condition: a label, a row of synthetic images, and under each its Grad-CAM heatmap
    for that condition (the layout of Salehinejad et al., ICASSP 2018, with heatmaps added).
    ``uninformative`` (from ``uninformative_heatmaps``) names the conditions whose heatmaps are not evidence."""
    pos = {int(i): k for k, i in enumerate(frag["preview_index"])}
    starts = np.concatenate([[0], np.cumsum([n for _, n in blocks])[:-1]])
    cols = max(1, min(columns, max(n for _, n in blocks)))
    gap, label = 4, 16
    band = label + 2 * TILE + gap
    labels = [band_label(condition, n, uninformative) for condition, n in blocks]
    # wide enough for the longest label, so a caveat is never cut off
    text_width = max(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(t) for t in labels)
    width = max(gap + cols * (TILE + gap), int(np.ceil(text_width)) + 2 * gap)
    canvas = np.full((gap + len(blocks) * (band + gap), width, 3), 255, np.uint8)
    for b, ((_, n), start) in enumerate(zip(blocks, starts)):
        y0 = gap + b * (band + gap) + label
        for c in range(min(cols, n)):
            k = pos.get(int(start + c))
            if k is None:
                continue
            px, hm = frag["preview_pixels"][k], frag["preview_heatmaps"][k]
            x0 = gap + c * (TILE + gap)
            canvas[y0 : y0 + TILE, x0 : x0 + TILE] = px[..., None]
            canvas[y0 + TILE : y0 + 2 * TILE, x0 : x0 + TILE] = heatmap_overlay(px, hm)
    im = Image.fromarray(canvas, mode="RGB")
    draw = ImageDraw.Draw(im)
    for b, text in enumerate(labels):
        draw.text((gap, gap + b * (band + gap) + 2), text, fill=(0, 0, 0))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
