"""A learnt CNN re-identification verifier (kind "cnn"): a small convolutional embedding trained so
that two radiographs of one patient are close and different patients far apart.

* **Input**: each 128 px image box-pooled to ``size`` px (64 by default) and standardised per image
  (zero mean, unit standard deviation), so brightness and contrast changes cannot move it.
* **Network** (``ReidNet``): ``arch="small"``: a stem and four stride-2 blocks of two 3x3 convs
  (BatchNorm, ReLU), GeM pooling, a linear layer to a ``dim``-d unit vector. ``arch="classifier"``:
  the bundle's condition classifier's conv body (128 px) as the trunk, the same head, so a fit can
  start from the model's own weights instead of from scratch.
* **Travels** as ``payload()``: the architecture and an fp16 ``state`` dict of torch tensors (a
  bundle read with ``torch.load(weights_only=True)`` needs nothing else); ``reid.space_from_payload``
  rebuilds it. Training lives in ``reid_train``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.imaging import from_uint8

SIZE = 64
DIM = 128
WIDTH = 32
INDEX_BATCH = 256


def standardise(x: torch.Tensor, size: int) -> torch.Tensor:
    """float [B,1,H,W] -> [B,1,size,size], zero mean and unit std per image (flat -> 0)."""
    if x.shape[-1] != size:
        x = F.adaptive_avg_pool2d(x, size)
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    s = x.std(dim=(1, 2, 3), keepdim=True)
    return torch.where(s > 1e-6, (x - m) / s.clamp(min=1e-6), torch.zeros_like(x))


class GeM(nn.Module):
    """Generalised-mean pooling (p learnt, starts at 3): between average and max pooling."""

    def __init__(self, p: float = 3.0):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))

    def forward(self, x):
        p = self.p.clamp(min=1.0, max=8.0)
        return x.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def classifier_body(width: int) -> nn.Sequential:
    """Same layout as ``models.networks.Classifier.body`` (so its state dict loads into it)."""
    chans, layers, cin = [width, width * 2, width * 4, width * 8], [], 1
    for c in chans:
        layers += [nn.Conv2d(cin, c, 4, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        cin = c
    layers += [nn.Conv2d(cin, cin, 3, 1, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class ReidNet(nn.Module):
    def __init__(self, arch: str = "small", width: int = WIDTH, dim: int = DIM):
        super().__init__()
        self.arch, self.width, self.dim = arch, int(width), int(dim)
        if arch == "small":
            w = self.width
            chans = [w, w * 2, w * 4, w * 8]
            layers: list[nn.Module] = [nn.Conv2d(1, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            cin = w
            for c in chans:
                layers += _block(cin, c)
                cin = c
            self.body = nn.Sequential(*layers)
        elif arch == "classifier":
            self.body = classifier_body(self.width)
            cin = self.width * 8
        else:
            raise ValueError(f"unknown verifier architecture {arch!r}")
        self.pool = GeM()
        self.fc = nn.Linear(cin, self.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fc(self.pool(self.body(x))), dim=1)


class CNNSpace:
    """index(x) = the network's unit embedding of standardised pixels; one query variant."""

    kind = "cnn"

    def __init__(self, net: ReidNet, size: int = SIZE, info: dict | None = None):
        # channels-last: oneDNN runs these convolutions ~1.35x faster on CPU (as the worker does for its nets)
        self.net, self.size, self.info = net.eval().to(memory_format=torch.channels_last), int(size), dict(info or {})
        self.name = f"learnt CNN verifier ({self.size} px, {net.arch} trunk, {net.dim}-d embedding, {self.info.get('loss', 'metric')} loss)"

    def index(self, pixels_uint8, batch_size: int = INDEX_BATCH) -> np.ndarray:
        px = np.asarray(pixels_uint8)
        if len(px) == 0:
            return np.zeros((0, self.net.dim), np.float32)
        out = []
        with torch.inference_mode():
            for s in range(0, len(px), batch_size):
                x = standardise(from_uint8(px[s : s + batch_size]), self.size).contiguous(memory_format=torch.channels_last)
                out.append(self.net(x).float().numpy())
        return np.concatenate(out).astype(np.float32)

    def query(self, pixels_uint8) -> np.ndarray:
        return self.index(pixels_uint8)[None]

    def payload(self) -> dict:
        state = {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).clone()
                 for k, v in self.net.state_dict().items()}
        return {"kind": self.kind, "size": self.size, "arch": self.net.arch, "width": self.net.width,
                "dim": self.net.dim, "state": state, "info": self.info}


def cnn_from_payload(p: dict) -> CNNSpace:
    net = ReidNet(str(p.get("arch", "small")), int(p.get("width", WIDTH)), int(p.get("dim", DIM)))
    state = {k: torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v for k, v in p["state"].items()}
    ref = net.state_dict()
    net.load_state_dict({k: state[k].to(ref[k].dtype) for k in ref})
    return CNNSpace(net, int(p.get("size", SIZE)), dict(p.get("info") or {}))
