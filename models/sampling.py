"""Inference helpers that training and evaluation share: device choice, autocast, per-step random
generators, and batched embed / predict / generate over uint8 or [-1, 1] images.

One home for them so ``train`` and ``evaluate`` both import from here and never from each other.
"""

from __future__ import annotations

import numpy as np
import torch

from .imaging import to_uint8
from .latents import latent_batch
from .networks import Classifier, Generator


def pick_device(device: str = "auto") -> torch.device:
    # Called inside commands only: CUDA is never initialised at import time.
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on GPUs that have it; a no-op context on CPU (bf16 convs are slow there)."""
    enabled = bf16 and device.type == "cuda"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def step_generator(seed: int, step: int, device="cpu") -> torch.Generator:
    """The random stream of training step ``step``: a resumed run draws what an uninterrupted one would."""
    g = torch.Generator(device="cpu")
    g.manual_seed((int(seed) * 1_000_003 + int(step) * 7919 + 12345) % (2**63 - 1))
    return g


def sample_weights(labels: np.ndarray, balance: str = "sqrt") -> np.ndarray:
    """Per-image sampling weights: ``none`` (natural), ``sqrt`` or ``full`` (inverse frequency)."""
    counts = labels.sum(axis=0).astype(np.float64)
    power = {"none": 0.0, "sqrt": 0.5, "full": 1.0}[balance]
    per_class = np.where(counts > 0, np.maximum(counts, 1.0) ** -power, 0.0)
    w = (labels * per_class[None, :]).max(axis=1)
    w = np.where(labels.sum(axis=1) > 0, w, per_class[per_class > 0].min() if (per_class > 0).any() else 1.0)
    return w / w.sum()


def images_to_float(images_u8: torch.Tensor) -> torch.Tensor:
    return (images_u8.float() / 127.5 - 1.0)[:, None]


def _as_float_batch(x) -> torch.Tensor:
    x = torch.as_tensor(x)
    return images_to_float(x) if x.dtype == torch.uint8 else x.float()


def console():
    from rich.console import Console

    return Console(stderr=True)


def progress(con, disable: bool = False):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[info]}"), console=con, disable=disable, transient=False)


@torch.no_grad()
def embed_images(classifier: Classifier, images, device, batch: int = 256, bf16: bool = True) -> np.ndarray:
    """uint8 [N,H,W] or float [-1,1] [N,1,H,W] -> classifier penultimate features [N,D] (float64)."""
    classifier.eval()
    out = []
    for i in range(0, len(images), batch):
        with autocast(device, bf16):
            out.append(classifier.embed(_as_float_batch(images[i : i + batch]).to(device)).float().cpu())
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros((0, classifier.embed_dim))


@torch.no_grad()
def predict_probs(classifier: Classifier, images, device, batch: int = 256, bf16: bool = True) -> np.ndarray:
    classifier.eval()
    out = []
    for i in range(0, len(images), batch):
        with autocast(device, bf16):
            out.append(torch.sigmoid(classifier(_as_float_batch(images[i : i + batch]).to(device)).float()).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, classifier.n_classes))


@torch.no_grad()
def generate_images(generator: Generator, labels: np.ndarray, seed: int, device, batch: int = 256,
                    bf16: bool = True) -> np.ndarray:
    """Generate one uint8 image per label row, latents from ``latent_batch(seed, i, 0)``."""
    generator.eval()
    out = []
    for i in range(0, len(labels), batch):
        idx = np.arange(i, min(i + batch, len(labels)))
        z = torch.from_numpy(latent_batch(seed, idx, 0, generator.nz)).to(device)
        y = torch.as_tensor(labels[idx], dtype=torch.float32, device=device)
        with autocast(device, bf16):
            out.append(to_uint8(generator(z, y).float()))
    return np.concatenate(out) if out else np.zeros((0, 128, 128), np.uint8)
