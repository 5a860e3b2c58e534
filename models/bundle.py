"""A model version's checkpoint: generator + classifier (+ discriminator) + config + card, in one file.

Weights are stored as fp16 state dicts (half the bytes; the networks are loaded back as float32,
and the worker runs them under bf16 autocast anyway). Everything else is plain JSON-able data so
``torch.load(weights_only=True)`` can read a bundle without unpickling arbitrary objects.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .conditions import CONDITIONS
from .imaging import IMAGE_SIZE
from .networks import Classifier, Discriminator, Generator

FORMAT = "xraysynth-bundle/1"

# Architecture defaults: the shipped model's sizes (fp16 total well under 30 MB).
DEFAULT_CONFIG: dict[str, Any] = {
    "nz": 128,
    "ngf": 32,
    "ndf": 32,
    "emb_dim": 128,
    "d_norm": "sn",
    "classifier_width": 32,
    "image_size": IMAGE_SIZE,
}


@dataclass
class Bundle:
    generator: Generator
    classifier: Classifier
    discriminator: Discriminator | None
    conditions: list[str]
    nz: int
    image_size: int
    config: dict = field(default_factory=dict)
    card: dict = field(default_factory=dict)
    verifier: dict | None = None  # re-identification verifier (models.privacy.reid payload), hospital zone

    def condition_vectors(self, names: list[str] | np.ndarray) -> torch.Tensor:
        """Condition names (one per image) -> one-hot float [B, C] on the bundle's device."""
        lookup = {n: i for i, n in enumerate(self.conditions)}
        idx = torch.as_tensor([lookup[n] for n in names], dtype=torch.long)
        return torch.nn.functional.one_hot(idx, len(self.conditions)).float().to(self.device)

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    @torch.no_grad()
    def generate(self, z, y) -> torch.Tensor:
        """Latents [B,nz] + multi-hot [B,C] (numpy or tensors) -> images [B,1,128,128] in [-1,1]."""
        z = torch.as_tensor(z, dtype=torch.float32, device=self.device)
        y = torch.as_tensor(y, dtype=torch.float32, device=self.device)
        return self.generator(z, y)

    def to(self, device) -> Bundle:
        for m in (self.generator, self.classifier, self.discriminator):
            if m is not None:
                m.to(device)
        return self


def build_networks(config: dict, n_classes: int, *, discriminator: bool = True):
    cfg = {**DEFAULT_CONFIG, **config}
    g = Generator(cfg["nz"], n_classes, cfg["ngf"], cfg["emb_dim"])
    c = Classifier(n_classes, cfg["classifier_width"])
    d = Discriminator(n_classes, cfg["ndf"], cfg["d_norm"]) if discriminator else None
    return g, c, d


def _half_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # fp16 for floating tensors only (BatchNorm's num_batches_tracked stays int64).
    return {
        k: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu())
        for k, v in module.state_dict().items()
    }


def bundle_payload(*, generator, classifier, discriminator, conditions, config, card, verifier=None) -> dict:
    cfg = {**DEFAULT_CONFIG, **(config or {})}
    if generator.n_classes != len(conditions):
        raise ValueError(f"generator has {generator.n_classes} classes, {len(conditions)} conditions given")
    return {
        "format": FORMAT,
        "conditions": list(conditions),
        "config": cfg,
        "card": card or {},
        "generator": _half_state(generator),
        "classifier": _half_state(classifier),
        "discriminator": _half_state(discriminator) if discriminator is not None else None,
        **({"verifier": verifier} if verifier is not None else {}),
    }


def bundle_bytes(**kwargs) -> bytes:
    """The exact bytes ``save_bundle`` writes (for sha256 and upload without a temp file)."""
    buf = io.BytesIO()
    torch.save(bundle_payload(**kwargs), buf)
    return buf.getvalue()


def write_atomic(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file: a crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def save_bundle(path, *, generator, classifier, discriminator, conditions, config, card, verifier=None) -> Path:
    return write_atomic(path, bundle_bytes(
        generator=generator, classifier=classifier, discriminator=discriminator,
        conditions=conditions, config=config, card=card, verifier=verifier,
    ))


def _load_state(module: torch.nn.Module, state: dict) -> None:
    ref = module.state_dict()
    module.load_state_dict({k: v.to(ref[k].dtype) if k in ref else v for k, v in state.items()})


def load_bundle(path_or_bytes, device="cpu") -> Bundle:
    """Read a bundle (path, bytes or file object); modules in eval mode, float32, on ``device``."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        src = io.BytesIO(bytes(path_or_bytes))
    else:
        src = path_or_bytes
    payload = torch.load(src, map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT:
        raise ValueError(f"not an xraysynth bundle (format={payload.get('format')!r})")
    conditions = list(payload["conditions"])
    cfg = {**DEFAULT_CONFIG, **payload["config"]}
    g, c, d = build_networks(cfg, len(conditions), discriminator=payload["discriminator"] is not None)
    _load_state(g, payload["generator"])
    _load_state(c, payload["classifier"])
    if d is not None:
        _load_state(d, payload["discriminator"])
    for m in (g, c, d):
        if m is not None:
            m.eval().requires_grad_(False)
    b = Bundle(g, c, d, conditions, int(cfg["nz"]), int(cfg["image_size"]), cfg, payload.get("card") or {},
               payload.get("verifier"))
    return b.to(device)


def untrained_bundle(conditions=CONDITIONS, seed: int = 0, config: dict | None = None) -> Bundle:
    """Same architecture, random init: for tests of everything downstream of a trained model."""
    cfg = {**DEFAULT_CONFIG, **(config or {})}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g, c, d = build_networks(cfg, len(conditions))
    for m in (g, c, d):
        m.eval().requires_grad_(False)
    card = {"name": "untrained", "note": "random weights, for tests only"}
    return Bundle(g, c, d, list(conditions), int(cfg["nz"]), int(cfg["image_size"]), cfg, card)
