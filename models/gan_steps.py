"""One GAN training step: hinge loss on a projection discriminator, with optional LeCam and R1.

Two step functions with one signature: ``gan_step`` (plain) and ``dp_gan_step`` (Opacus DP-SGD on
D). Both take the step's random generator and return the step's statistics; what varies between
steps (weights, optimisers, the LeCam moving averages) lives in ``GanState`` so a checkpoint is a
dump of it.

* **LeCam** (Tseng et al. 2021): ``lam * (mean(relu(D(x) - a_F)^2) + mean(relu(a_R - D(G(z)))^2))``
  with a_R, a_F moving averages (0.99) of D's outputs on real and fake; it keeps D's predictions
  from drifting apart on small data.
* **R1** (Mescheder et al. 2018): ``gamma/2 * |grad_x D(x_real)|^2`` on the augmented real batch,
  lazily every ``r1_every`` steps and scaled by it (StyleGAN2's lazy regularisation).
* Neither runs under DP: R1's double backward has no per-sample gradients in Opacus, and LeCam's
  averages of D on real images would be a channel outside the accountant.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from .augment import diff_augment
from .sampling import autocast, step_generator

LECAM_DECAY = 0.99


@dataclass
class Recipe:
    policy: tuple[str, ...] = ("translation",)
    shift: int = 8
    lecam: float = 0.0
    r1: float = 0.0
    r1_every: int = 4
    bf16: bool = True


@dataclass
class GanState:
    G: torch.nn.Module
    D: torch.nn.Module
    G_ema: torch.nn.Module
    optG: torch.optim.Optimizer
    optD: torch.optim.Optimizer
    step: int = 0
    lecam_ema: dict = field(default_factory=lambda: {"real": 0.0, "fake": 0.0})


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm.detach(), 1.0 - decay)
        for be, bm in zip(ema.buffers(), model.buffers()):
            be.copy_(bm)


def _lecam(d_real: torch.Tensor, d_fake: torch.Tensor, ema: dict) -> torch.Tensor:
    ema["real"] = LECAM_DECAY * ema["real"] + (1 - LECAM_DECAY) * float(d_real.detach().mean())
    ema["fake"] = LECAM_DECAY * ema["fake"] + (1 - LECAM_DECAY) * float(d_fake.detach().mean())
    return F.relu(d_real - ema["fake"]).pow(2).mean() + F.relu(ema["real"] - d_fake).pow(2).mean()


def _hinge_d(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()


def _g_step(st: GanState, fake, y_fake, rc: Recipe, gen, device) -> torch.Tensor:
    """Generator step on the fake batch D just saw (as pytorch/examples dcgan does)."""
    st.D.requires_grad_(False)
    with autocast(device, rc.bf16):
        loss_g = -st.D(diff_augment(fake, rc.policy, rc.shift, gen), y_fake).float().mean()
    st.optG.zero_grad(set_to_none=True)
    loss_g.backward()
    st.optG.step()
    st.D.requires_grad_(True)
    return loss_g


def _finish(st: GanState, ema_decay: float, loss_d, loss_g, d_real, d_fake, extra=None) -> dict:
    ema_update(st.G_ema, st.G, min(ema_decay, (1.0 + st.step) / (10.0 + st.step)))
    st.step += 1
    return {"loss_d": loss_d.item(), "loss_g": loss_g.item(), "d_real": d_real.detach().mean().item(),
            "d_fake": d_fake.detach().mean().item(), **(extra or {})}


def gan_step(st: GanState, x_real, y_real, y_fake, z, rc: Recipe, gen, device, ema_decay: float) -> dict:
    """One D step then one G step; real and fake go through D in one batch."""
    b = len(x_real)
    with autocast(device, rc.bf16):
        fake = st.G(z, y_fake)
        both = diff_augment(torch.cat([x_real, fake.detach()]), rc.policy, rc.shift, gen)
        r1_now = rc.r1 > 0 and st.step % rc.r1_every == 0
        if r1_now:
            both = both.detach().requires_grad_(True)
        d_out = st.D(both, torch.cat([y_real, y_fake])).float()
        d_real, d_fake = d_out[:b], d_out[b:]
        loss_d = _hinge_d(d_real, d_fake)
    extra = {}
    if rc.lecam > 0:
        reg = _lecam(d_real, d_fake, st.lecam_ema)
        loss_d = loss_d + rc.lecam * reg
        extra["lecam"] = float(reg.detach())
    if r1_now:
        # samples are independent in D (no batch norm), so d(sum of real logits)/d(input) is per image
        (grad,) = torch.autograd.grad(d_real.sum(), both, create_graph=True)
        pen = grad[:b].float().pow(2).flatten(1).sum(1).mean()
        loss_d = loss_d + 0.5 * rc.r1 * rc.r1_every * pen
        extra["r1"] = float(pen.detach())
    st.optD.zero_grad(set_to_none=True)
    loss_d.backward()
    st.optD.step()
    loss_g = _g_step(st, fake, y_fake, rc, gen, device)
    return _finish(st, ema_decay, loss_d, loss_g, d_real, d_fake, extra)


def dp_gan_step(st: GanState, x_real, y_real, y_fake, z, rc: Recipe, gen, device, ema_decay: float) -> dict:
    """DP-SGD D step (two passes: each per-sample gradient pairs one real with one fake image), then G."""
    with autocast(device, rc.bf16):
        fake = st.G(z, y_fake)
        d_real = st.D(diff_augment(x_real, rc.policy, rc.shift, gen), y_real).float()
        d_fake = st.D(diff_augment(fake.detach(), rc.policy, rc.shift, gen), y_fake).float()
        loss_d = _hinge_d(d_real, d_fake)
    st.optD.zero_grad(set_to_none=True)
    loss_d.backward()
    st.optD.step()
    st.D.disable_hooks()  # no per-sample gradients for D during G's step
    loss_g = _g_step(st, fake, y_fake, rc, gen, device)
    st.D.enable_hooks()
    st.optD.zero_grad(set_to_none=True)
    return _finish(st, ema_decay, loss_d, loss_g, d_real, d_fake)


@torch.no_grad()
def recalibrate_bn(generator, label_pool, seed: int, device, n_images: int = 2048, batch: int = 128) -> None:
    """Re-estimate G's BatchNorm running statistics for its current (EMA) weights.

    EMA averages weights but the copied running stats belong to the live generator; in eval mode the
    mismatch shows as washed-out or saturated images. ``label_pool`` holds the label rows to draw from.
    """
    bns = [m for m in generator.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    generator.train()
    g = step_generator(seed, -1)
    for start in range(0, n_images, batch):
        b = min(batch, n_images - start)
        idx = torch.randint(0, len(label_pool), (b,), generator=g)
        z = torch.randn(b, generator.nz, generator=g).to(device)
        y = torch.as_tensor(label_pool[idx.numpy()], dtype=torch.float32, device=device)
        generator(z, y)
    for m in bns:
        m.momentum = 0.1
    generator.eval()
