"""The device stage of a shard: generator + Grad-CAM on the GPU (bf16) or the CPU, in batches.

torch and models/ are imported inside the functions that run on the device: the worker's parent
process imports this module but must never initialise CUDA before it forks its children.
"""

from __future__ import annotations

import numpy as np

from service.settings import get_settings
from workers import metrics
from workers.config import worker_settings
from workers.encode import heatmaps_to_uint8


def block_of(indices: np.ndarray, blocks: list[tuple[str, int]]) -> np.ndarray:
    """Block number (position in ``blocks``) of each image index."""
    ends = np.cumsum([n for _, n in blocks])
    return np.searchsorted(ends, np.asarray(indices), side="right")


def prepare_for_inference(bundle):
    """Channels-last weights: oneDNN (CPU) and tensor cores (GPU) run these convolutions about twice as
    fast in NHWC. Done once per loaded model; the pixels depend on it, so every path uses it."""
    import torch

    for m in (bundle.generator, bundle.classifier):
        m.to(memory_format=torch.channels_last)
    return bundle


def device_batch_size(device: str) -> int:
    s = get_settings()
    return s.generation_batch_size if device == "cuda" else min(s.generation_batch_size, worker_settings().cpu_batch_size)


class DeviceStage:
    """Generator + Grad-CAM for (indices, attempts), as ``filter_and_replace`` wants it.

    Returns (pixels uint8 [b,128,128], embeddings, {"heatmaps": uint8 [b,32,32], "probs": float32 [b]}).
    The classifier looks at the quantised image (what is released), so its probability, heatmap and
    embedding describe the released pixels exactly.
    """

    def __init__(self, loaded, seed: int, blocks: list[tuple[str, int]]):
        import torch

        self.torch = torch
        self.bundle = loaded.bundle
        self.device = torch.device(loaded.device)
        self.seed = int(seed)
        self.blocks = blocks
        lookup = {c: i for i, c in enumerate(self.bundle.conditions)}
        self.block_class = np.array([lookup[c] for c, _ in blocks], dtype=np.int64)
        self.cuda = self.device.type == "cuda"

    def classes(self, indices: np.ndarray) -> np.ndarray:
        return self.block_class[block_of(indices, self.blocks)]

    def _autocast(self):
        torch = self.torch
        if self.cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def _to_device(self, a: np.ndarray):
        t = self.torch.from_numpy(a)
        if self.cuda:  # pinned host memory: the copy overlaps with the previous kernel
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    def generate(self, indices: np.ndarray, attempts: np.ndarray):
        """Generator only -> (quantised float images in [-1,1] [b,1,128,128], pixels uint8 [b,128,128])."""
        # torch: the worker parent imports this module before it forks, so models/ loads on first use
        from models.latents import latent_batch

        torch = self.torch
        z = self._to_device(latent_batch(self.seed, indices, attempts, self.bundle.nz))
        cls = self._to_device(self.classes(indices))
        y = torch.nn.functional.one_hot(cls, len(self.bundle.conditions)).float()
        with torch.inference_mode(), self._autocast():
            x = self.bundle.generator(z, y)
            # Same arithmetic as models.imaging.to_uint8/from_uint8, without a host round trip.
            q = ((x.float().clamp(-1, 1) + 1.0) * 127.5).round()
            pixels = q.to(torch.uint8)[:, 0].cpu().numpy()
            xq = q / 127.5 - 1.0
        return xq, pixels, cls

    def gradcam(self, xq, cls):
        # torch: the worker parent imports this module before it forks, so models/ loads on first use
        from models.gradcam import gradcam_batch

        with self._autocast():
            return gradcam_batch(self.bundle.classifier, xq, cls, out_size=32)

    def __call__(self, indices, attempts):
        indices = np.asarray(indices, dtype=np.int64)
        with metrics.stage("generate"):
            xq, pixels, cls = self.generate(indices, np.asarray(attempts, dtype=np.int64))
        with metrics.stage("heatmaps"):  # up to the host copies: on a GPU those are where the work waits
            r = self.gradcam(xq, cls)
            extra = {
                "heatmaps": heatmaps_to_uint8(r.heatmaps.float().cpu().numpy()),
                "probs": r.probs.float().cpu().numpy().astype(np.float32),
            }
        return pixels, r.embeddings, extra
