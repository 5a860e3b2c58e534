"""The three networks, as small plain modules in the shape of pytorch/examples' dcgan, at 128 px.

Conditions are multi-hot vectors y [B, C] (604 NIH images carry several findings). Every network
turns y into a learned embedding the same way: the *mean* of the embeddings of the image's
conditions (y @ E / |y|). A single-condition request (the worker's usual case) therefore lands on
exactly that condition's embedding, a multi-label image on the centroid of its conditions, and an
image with two findings is not "twice as conditioned" as one with one finding.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import spectral_norm


def label_mean(y: torch.Tensor) -> torch.Tensor:
    """Multi-hot [B,C] -> row-normalised weights so y @ E is the mean embedding (0 rows stay 0)."""
    y = y.float()
    return y / y.sum(dim=1, keepdim=True).clamp(min=1.0)


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without its own affine; gain and bias come from [condition embedding, z].

    This is how the condition reaches every resolution of the generator (as in SNGAN/BigGAN)
    instead of only the 1x1 input, which DCGAN-style concatenation alone does poorly at 128 px.
    z is fed in too (BigGAN's skip-z): with the condition alone at every stage and z only at the
    input, the generator learned one image per condition (z ignored) within a few hundred steps.
    """

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Linear(cond_dim, channels)
        self.bias = nn.Linear(cond_dim, channels)
        for lin in (self.gain, self.bias):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        g = 1.0 + self.gain(e)
        b = self.bias(e)
        return self.bn(x) * g[:, :, None, None] + b[:, :, None, None]


class Generator(nn.Module):
    """z [B,nz] + y [B,C] -> image [B,1,128,128] in [-1,1].

    pytorch/examples dcgan, one stage deeper for 128 px: 1 -> 4 -> 8 -> 16 -> 32 -> 64 -> 128 with
    transposed 4x4 convolutions, channels ngf*16 .. ngf. The condition embedding is concatenated to z
    (DCGAN style) and also drives conditional BatchNorm at every stage.
    """

    def __init__(self, nz: int = 128, n_classes: int = 16, ngf: int = 32, emb_dim: int = 128):
        super().__init__()
        self.nz, self.n_classes, self.ngf, self.emb_dim = nz, n_classes, ngf, emb_dim
        self.embed = nn.Linear(n_classes, emb_dim, bias=False)
        chans = [ngf * 16, ngf * 8, ngf * 4, ngf * 2, ngf]
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        cin = nz + emb_dim
        for i, c in enumerate(chans):
            if i == 0:
                self.convs.append(nn.ConvTranspose2d(cin, c, 4, 1, 0, bias=False))
            else:
                self.convs.append(nn.ConvTranspose2d(cin, c, 4, 2, 1, bias=False))
            self.norms.append(ConditionalBatchNorm2d(c, emb_dim + nz))
            cin = c
        self.out = nn.ConvTranspose2d(cin, 1, 4, 2, 1, bias=True)
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
        nn.init.normal_(self.embed.weight, 0.0, 1.0)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        e = label_mean(y).to(self.embed.weight.dtype) @ self.embed.weight.t()
        cond = torch.cat([z.to(e.dtype), e], dim=1)
        h = cond[:, :, None, None]
        for conv, norm in zip(self.convs, self.norms):
            h = F.relu(norm(conv(h), cond))
        return torch.tanh(self.out(h))


class Discriminator(nn.Module):
    """x [B,1,128,128] + y [B,C] -> score [B] (projection discriminator, Miyato & Koyama 2018).

    dcgan's strided 4x4 convolutions 128 -> 4 with channels ndf .. ndf*16, then
    score = w . phi(x) + <embed(y), phi(x)>, phi = sum-pooled last features.
    ``norm``: "sn" spectral norm (default, for hinge loss); "gn" GroupNorm and "none" for DP
    training, because Opacus computes per-sample gradients for GroupNorm/Conv/Linear but not for
    BatchNorm (which mixes samples) or spectral-norm power iterations.
    """

    def __init__(self, n_classes: int = 16, ndf: int = 32, norm: str = "sn"):
        super().__init__()
        if norm not in ("sn", "gn", "none"):
            raise ValueError(f"norm must be sn|gn|none, not {norm!r}")
        self.n_classes, self.ndf, self.norm = n_classes, ndf, norm
        wrap = spectral_norm if norm == "sn" else (lambda m: m)
        chans = [ndf, ndf * 2, ndf * 4, ndf * 8, ndf * 16]
        layers: list[nn.Module] = []
        cin = 1
        for i, c in enumerate(chans):
            layers.append(wrap(nn.Conv2d(cin, c, 4, 2, 1, bias=(norm != "gn" or i == 0))))
            if norm == "gn" and i > 0:
                layers.append(nn.GroupNorm(min(32, c // 4), c))
            layers.append(nn.LeakyReLU(0.2))
            cin = c
        self.main = nn.Sequential(*layers)
        self.linear = wrap(nn.Linear(cin, 1))
        self.embed = wrap(nn.Linear(n_classes, cin, bias=False))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).sum(dim=(2, 3))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        phi = self.features(x)
        proj = (self.embed(label_mean(y).to(phi.dtype)) * phi).sum(dim=1)
        return self.linear(phi).squeeze(1) + proj


class Classifier(nn.Module):
    """Multi-label condition classifier: x [B,1,128,128] -> logits [B,C].

    Small VGG-ish CNN: four strided 4x4 stages 128 -> 8 (width .. width*8) and a 3x3 stage at 8x8
    whose activations are the Grad-CAM layer. ``embed`` = global-average-pooled features (the
    penultimate layer: Fréchet distance, precision/recall and the privacy index live there).
    """

    def __init__(self, n_classes: int = 16, width: int = 32, dropout: float = 0.2):
        super().__init__()
        self.n_classes, self.width = n_classes, width
        chans = [width, width * 2, width * 4, width * 8]
        layers: list[nn.Module] = []
        cin = 1
        for c in chans:
            layers += [nn.Conv2d(cin, c, 4, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            cin = c
        layers += [nn.Conv2d(cin, cin, 3, 1, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, n_classes)
        self.embed_dim = cin

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Activations of the last conv stage [B, D, 8, 8] (the Grad-CAM layer)."""
        return self.body(x)

    def head(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = fmap.mean(dim=(2, 3))
        return self.fc(self.dropout(emb)), emb

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feature_map(x))[0]


def count_parameters(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())
