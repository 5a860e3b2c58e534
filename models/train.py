"""Training: the condition classifier and the conditional DCGAN (optionally DP via Opacus).

Choices, and why:

* **Class balance: square-root sampling.** Each image is drawn with weight max_c n_c^-1/2 over its
  conditions, so condition c is seen in proportion to sqrt(n_c) rather than n_c: Hernia (17 train
  images) goes from 0.3 % to ~1.8 % of batches, Pneumonia (3,531) from 61 % to ~25 %. Full balancing
  would show the 17 Hernia images as often as 3,531 Pneumonia images -- memorisation risk for the
  rare classes in a privacy product -- while natural frequencies leave the rare conditions (the ones
  the study's augmentation gain came from) barely trained. The classifier uses the same sampler.
* **Hinge loss + projection discriminator + spectral norm**, Adam(beta1=0), D's learning rate 4x G's
  (TTUR): the standard recipe for class-conditional GANs. With equal rates the spectral-norm D
  stayed at D(x) ~ D(G(z)) ~ 0 for 300 steps and G collapsed to one image per condition.
* **Small random shifts** (up to ``shift`` px, padded with air) applied to real *and* generated
  images before D (DiffAugment-style, so G is not taught to produce shifts): 5.7k images are few for
  a discriminator. No flips: chest anatomy is not left-right symmetric.
* **EMA of generator weights** (decay 0.999 with warm-up) is what ships; its BatchNorm statistics
  are re-estimated on generated batches before evaluation and saving.
* **Determinism and resume**: the batch indices and latents of step t come from a generator seeded
  with (seed, t), so a resumed run draws exactly the batches an uninterrupted run would.
* **Selection on val**: every ``eval_every`` steps the EMA generator's Fréchet distance to the val
  split (classifier features) is measured; the best is kept. Not under DP (val is private data and
  selection on it is not covered by epsilon): there the final generator ships.
* **DP** (``dp=True``): Opacus DP-SGD on the discriminator (GroupNorm, no spectral norm, no BatchNorm)
  with Poisson sampling of the real data and uniform (public) condition labels for everything the
  generator sees, so the generator is post-processing of a DP discriminator.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .bundle import DEFAULT_CONFIG, save_bundle
from .networks import Classifier, Discriminator, Generator
from .trainset import TrainSet, load_trainset


# --------------------------------------------------------------------------- utilities

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


def translate(x: torch.Tensor, max_shift: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """Random integer shift of each image by up to ``max_shift`` px, padding with -1 (air).

    Differentiable (grid_sample), batched, no per-image loop.
    """
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


def images_to_float(images_u8: torch.Tensor) -> torch.Tensor:
    return (images_u8.float() / 127.5 - 1.0)[:, None]


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _progress(console, disable: bool = False):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[info]}"), console=console, disable=disable, transient=False)


def frechet_from_features(a: np.ndarray, b: np.ndarray) -> float:
    from .evaluate import frechet_distance

    return frechet_distance(a, b)


@torch.no_grad()
def embed_images(classifier: Classifier, images, device, batch: int = 256, bf16: bool = True) -> np.ndarray:
    """uint8 [N,H,W] or float [-1,1] [N,1,H,W] -> classifier penultimate features [N,D] (float64)."""
    classifier.eval()
    out = []
    for i in range(0, len(images), batch):
        x = images[i : i + batch]
        x = torch.as_tensor(x)
        x = images_to_float(x) if x.dtype == torch.uint8 else x.float()
        with autocast(device, bf16):
            out.append(classifier.embed(x.to(device)).float().cpu())
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros((0, classifier.embed_dim))


@torch.no_grad()
def predict_probs(classifier: Classifier, images, device, batch: int = 256, bf16: bool = True) -> np.ndarray:
    classifier.eval()
    out = []
    for i in range(0, len(images), batch):
        x = torch.as_tensor(images[i : i + batch])
        x = images_to_float(x) if x.dtype == torch.uint8 else x.float()
        with autocast(device, bf16):
            out.append(torch.sigmoid(classifier(x.to(device)).float()).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, classifier.n_classes))


@torch.no_grad()
def generate_images(generator: Generator, labels: np.ndarray, seed: int, device, batch: int = 256,
                    bf16: bool = True) -> np.ndarray:
    """Generate one uint8 image per label row, latents from ``latent_batch(seed, i, 0)``."""
    from .imaging import to_uint8
    from .latents import latent_batch

    generator.eval()
    out = []
    for i in range(0, len(labels), batch):
        idx = np.arange(i, min(i + batch, len(labels)))
        z = torch.from_numpy(latent_batch(seed, idx, 0, generator.nz)).to(device)
        y = torch.as_tensor(labels[idx], dtype=torch.float32, device=device)
        with autocast(device, bf16):
            out.append(to_uint8(generator(z, y).float()))
    return np.concatenate(out) if out else np.zeros((0, 128, 128), np.uint8)


# --------------------------------------------------------------------------- classifier

@dataclass
class ClassifierConfig:
    trainset: str
    out: str = "runs/classifier"
    seed: int = 0
    width: int = 32
    epochs: float = 8.0
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    balance: str = "sqrt"
    shift: int = 8
    device: str = "auto"
    bf16: bool = True
    threads: int = 2
    progress: bool = True
    max_steps: int | None = None  # cap (tests); None = epochs * steps_per_epoch


def macro_auc(y_true: np.ndarray, scores: np.ndarray) -> tuple[float, list[float | None]]:
    """Mean ROC AUC over classes that have both positives and negatives; per-class list (None = undefined)."""
    from .evaluate import roc_auc

    per = [roc_auc(y_true[:, k], scores[:, k]) for k in range(y_true.shape[1])]
    valid = [a for a in per if a is not None]
    return (float(np.mean(valid)) if valid else float("nan")), per


def fit_classifier(images: np.ndarray, labels: np.ndarray, *, val_images=None, val_labels=None, width: int = 32,
                   epochs: float = 8.0, batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 1e-4,
                   balance: str = "sqrt", shift: int = 8, seed: int = 0, device=None, bf16: bool = True,
                   max_steps: int | None = None, progress: bool = True, console=None, desc: str = "classifier",
                   state: dict | None = None) -> tuple[Classifier, dict]:
    """Train a multi-label classifier; keeps the epoch with the best val macro AUC if val is given.

    ``images`` uint8 [N,H,W]; used by ``train classifier`` and by evaluation (TSTR, augmentation).
    """
    device = device or pick_device()
    console = console or _console()
    torch.manual_seed(seed)
    n_classes = labels.shape[1]
    model = Classifier(n_classes, width).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, math.ceil(len(images) / batch_size))
    total = max_steps or int(round(epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total, 1), pct_start=0.15)
    weights = torch.from_numpy(sample_weights(labels, balance))
    x_all = torch.from_numpy(np.ascontiguousarray(images))
    y_all = torch.from_numpy(np.ascontiguousarray(labels)).float()
    best = {"auc": -1.0, "state": None, "step": 0}
    history = []
    t0 = time.time()
    eval_every = steps_per_epoch if val_images is not None else None
    with _progress(console, disable=not progress) as bar:
        task = bar.add_task(desc, total=total, info="")
        for step in range(total):
            model.train()
            g = step_generator(seed, step)
            idx = torch.multinomial(weights, batch_size, replacement=True, generator=g)
            x = translate(images_to_float(x_all[idx]), shift, g).to(device)
            # mild contrast/brightness jitter: sources differ in exposure
            gain = 1 + 0.1 * (torch.rand(len(idx), 1, 1, 1, generator=g) * 2 - 1)
            bias = 0.1 * (torch.rand(len(idx), 1, 1, 1, generator=g) * 2 - 1)
            x = (x * gain.to(device) + bias.to(device)).clamp(-1, 1)
            y = y_all[idx].to(device)
            with autocast(device, bf16):
                loss = F.binary_cross_entropy_with_logits(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(task, advance=1, info=f"loss {loss.item():.3f}")
            last = step + 1 == total
            if eval_every and ((step + 1) % eval_every == 0 or last):
                probs = predict_probs(model, val_images, device, bf16=bf16)
                auc, _ = macro_auc(val_labels, probs)
                history.append({"step": step + 1, "val_macro_auc": auc, "loss": float(loss.item()),
                                "elapsed_s": time.time() - t0})
                console.print(f"{desc}: step {step + 1}/{total} epoch {(step + 1) / steps_per_epoch:.1f} "
                              f"val macro AUC {auc:.3f} ({(time.time() - t0) / (step + 1):.2f} s/step)")
                if auc > best["auc"]:
                    best = {"auc": auc, "state": copy.deepcopy(model.state_dict()), "step": step + 1}
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    info = {"best_val_macro_auc": best["auc"] if best["state"] is not None else None, "best_step": best["step"],
            "steps": total, "steps_per_epoch": steps_per_epoch, "wall_s": time.time() - t0, "history": history,
            "width": width, "balance": balance, "batch_size": batch_size, "lr": lr, "epochs": epochs}
    return model, info


def train_classifier(cfg: ClassifierConfig) -> Path:
    torch.set_num_threads(cfg.threads)
    console = _console()
    device = pick_device(cfg.device)
    ts = load_trainset(cfg.trainset)
    tr, va = ts.split("train"), ts.split("val")
    console.print(f"classifier: {len(tr)} train / {len(va)} val images, device {device}")
    model, info = fit_classifier(
        tr.images, tr.labels, val_images=va.images, val_labels=va.labels, width=cfg.width, epochs=cfg.epochs,
        batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay, balance=cfg.balance, shift=cfg.shift,
        seed=cfg.seed, device=device, bf16=cfg.bf16, max_steps=cfg.max_steps, progress=cfg.progress,
        console=console,
    )
    _, per = macro_auc(va.labels, predict_probs(model, va.images, device, bf16=cfg.bf16))
    info["val_auc_per_condition"] = dict(zip(ts.conditions, per))
    info["trainset_fingerprint"] = ts.fingerprint
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"state": model.cpu().state_dict(), "width": cfg.width, "conditions": ts.conditions,
                "config": asdict(cfg), "info": info}, out / "classifier.pt")
    (out / "classifier.json").write_text(json.dumps({"config": asdict(cfg), **info}, indent=2, default=str))
    console.print(f"classifier saved to {out / 'classifier.pt'} (val macro AUC {info['best_val_macro_auc']})")
    return out / "classifier.pt"


def load_classifier(path, device="cpu") -> tuple[Classifier, dict]:
    ck = torch.load(path, map_location="cpu", weights_only=True)
    m = Classifier(len(ck["conditions"]), ck["width"])
    m.load_state_dict(ck["state"])
    return m.to(device).eval(), ck


# --------------------------------------------------------------------------- GAN

@dataclass
class GanConfig:
    trainset: str
    out: str = "runs/gan"
    classifier: str | None = None  # classifier.pt: val monitoring + the bundle's classifier
    seed: int = 0
    iters: int = 20000  # total steps (a resumed run continues towards this)
    minutes: float | None = None  # wall budget for this invocation
    batch_size: int = 64
    nz: int = DEFAULT_CONFIG["nz"]
    ngf: int = DEFAULT_CONFIG["ngf"]
    ndf: int = DEFAULT_CONFIG["ndf"]
    emb_dim: int = DEFAULT_CONFIG["emb_dim"]
    d_norm: str = "sn"  # sn | gn | none (DP forces a per-sample one: gn or none)
    lr_g: float = 2e-4
    lr_d: float = 8e-4  # 4x G's (TTUR): a spectral-norm D at 2e-4 never separated real from fake here
    beta1: float = 0.0
    beta2: float = 0.99
    ema_decay: float = 0.999
    balance: str = "sqrt"
    shift: int = 8
    eval_every: int = 500
    log_every: int = 0  # print running D/G statistics every n steps (0: once per epoch)
    ckpt_every: int = 250
    n_eval: int = 730  # generated images per val check (the val split's size)
    bn_calib: int = 2048  # generated images to re-estimate the EMA generator's BatchNorm statistics
    device: str = "auto"
    bf16: bool = True
    threads: int = 2
    progress: bool = True
    resume: bool = True
    # differential privacy
    dp: bool = False
    epsilon: float = 10.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    dp_epochs: float = 5.0  # epochs over the real data the noise is calibrated for
    extra: dict = field(default_factory=dict)


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm.detach(), 1.0 - decay)
        for be, bm in zip(ema.buffers(), model.buffers()):
            be.copy_(bm)


@torch.no_grad()
def recalibrate_bn(generator: Generator, label_pool: np.ndarray, seed: int, device, n_images: int = 2048,
                   batch: int = 128) -> None:
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


def _gan_networks(cfg: GanConfig, n_classes: int, device):
    g = Generator(cfg.nz, n_classes, cfg.ngf, cfg.emb_dim).to(device)
    d_norm = cfg.d_norm if not (cfg.dp and cfg.d_norm == "sn") else "gn"
    d = Discriminator(n_classes, cfg.ndf, d_norm).to(device)
    return g, d


def train_gan(cfg: GanConfig) -> dict:
    """Train (or resume) a GAN run in ``cfg.out``; writes ckpt.pt, history.json and bundle.pt."""
    torch.set_num_threads(cfg.threads)
    console = _console()
    device = pick_device(cfg.device)
    ts = load_trainset(cfg.trainset)
    tr, va = ts.split("train"), ts.split("val")
    n_classes = len(ts.conditions)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "ckpt.pt"

    torch.manual_seed(cfg.seed)  # weight init; everything after draws from (seed, step) generators
    G, D = _gan_networks(cfg, n_classes, device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    optG = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    optD = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))

    classifier = None
    val_feats = None
    if cfg.classifier:
        classifier, _ = load_classifier(cfg.classifier, device)
        if not cfg.dp:
            val_feats = embed_images(classifier, va.images, device, bf16=cfg.bf16)

    step, elapsed_before, history, best = 0, 0.0, [], {"fd": float("inf"), "step": None, "state": None}
    dp_state = None
    if cfg.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        G.load_state_dict(ck["G"])
        D.load_state_dict(ck["D"])
        G_ema.load_state_dict(ck["G_ema"])
        optG.load_state_dict(ck["optG"])
        optD.load_state_dict(ck["optD"])
        step, elapsed_before = int(ck["step"]), float(ck["elapsed_s"])
        history = json.loads(ck["history"])
        best = {"fd": ck["best_fd"], "step": ck["best_step"], "state": ck["best_state"]}
        dp_state = ck.get("dp_accountant")
        console.print(f"resumed {ckpt_path} at step {step}")

    engine = None
    real_loader = None
    if cfg.dp:
        engine, D, optD, real_loader, dp_info = _make_private(cfg, D, optD, tr, dp_state, console)
    x_all = torch.from_numpy(np.ascontiguousarray(tr.images))
    y_all = torch.from_numpy(np.ascontiguousarray(tr.labels)).float()
    weights = torch.from_numpy(sample_weights(tr.labels, cfg.balance))
    uniform_labels = np.eye(n_classes, dtype=np.float32)
    calib_labels = uniform_labels if cfg.dp else tr.labels  # DP: nothing private reaches G
    steps_per_epoch = max(1, math.ceil(len(tr) / cfg.batch_size))
    if cfg.dp:  # the noise was calibrated for dp_epochs: running longer would overspend epsilon
        cfg.iters = min(cfg.iters, int(math.ceil(cfg.dp_epochs * steps_per_epoch)))

    def save(final: bool = False) -> None:
        ck = {
            "step": step, "elapsed_s": elapsed_before + (time.time() - t_start), "config": json.dumps(asdict(cfg)),
            "G": G.state_dict(), "D": _plain_module(D).state_dict(), "G_ema": G_ema.state_dict(),
            "optG": optG.state_dict(), "optD": _plain_optimizer(optD).state_dict(),
            "history": json.dumps(history), "best_fd": best["fd"], "best_step": best["step"],
            "best_state": best["state"],
        }
        if engine is not None:
            ck["dp_accountant"] = engine.accountant.state_dict()
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(ck, tmp)
        tmp.replace(ckpt_path)

    t_start = time.time()
    t_epoch = time.time()
    deadline = t_start + cfg.minutes * 60 if cfg.minutes else None
    real_iter = iter(real_loader) if real_loader is not None else None
    run_stats, start_step = np.zeros(5), step
    console.print(f"GAN: {len(tr)} train images, {steps_per_epoch} steps/epoch, batch {cfg.batch_size}, "
                  f"device {device}, from step {step} to {cfg.iters}" + (" [DP]" if cfg.dp else ""))
    with _progress(console, disable=not cfg.progress) as bar:
        task = bar.add_task("gan", total=cfg.iters, completed=step, info="")
        while step < cfg.iters and (deadline is None or time.time() < deadline):
            g = step_generator(cfg.seed, step)
            G.train()
            D.train()
            if cfg.dp:
                try:
                    xb, yb = next(real_iter)
                except StopIteration:
                    real_iter = iter(real_loader)
                    xb, yb = next(real_iter)
                b = len(xb)
                if b == 0:  # Poisson sampling may draw an empty batch (p ~ e^-batch): nothing to learn
                    step += 1
                    continue
                x_real = images_to_float(xb).to(device)
                y_real = yb.float().to(device)
                y_fake = torch.from_numpy(uniform_labels[torch.randint(0, n_classes, (b,), generator=g).numpy()]).to(device)
            else:
                idx = torch.multinomial(weights, cfg.batch_size, replacement=True, generator=g)
                b = len(idx)
                x_real = images_to_float(x_all[idx]).to(device)
                y_real = y_all[idx].to(device)
                y_fake = y_real  # same label mix as the real batch
            z = torch.randn(b, cfg.nz, generator=g).to(device)

            # --- discriminator step (hinge)
            with autocast(device, cfg.bf16):
                fake = G(z, y_fake)
                if cfg.dp:
                    # two passes so each per-sample gradient pairs one real with one fake image
                    d_real = D(translate(x_real, cfg.shift, g), y_real)
                    d_fake = D(translate(fake.detach(), cfg.shift, g), y_fake)
                else:
                    both = translate(torch.cat([x_real, fake.detach()]), cfg.shift, g)
                    d_out = D(both, torch.cat([y_real, y_fake]))
                    d_real, d_fake = d_out[:b], d_out[b:]
                loss_d = F.relu(1.0 - d_real.float()).mean() + F.relu(1.0 + d_fake.float()).mean()
            optD.zero_grad(set_to_none=True)
            loss_d.backward()
            optD.step()

            # --- generator step (reuses the fake batch, as pytorch/examples dcgan does)
            if cfg.dp:
                D.disable_hooks()  # no per-sample grads for D during G's step
            D.requires_grad_(False)
            with autocast(device, cfg.bf16):
                loss_g = -D(translate(fake, cfg.shift, g), y_fake).float().mean()
            optG.zero_grad(set_to_none=True)
            loss_g.backward()
            optG.step()
            D.requires_grad_(True)
            if cfg.dp:
                D.enable_hooks()
                optD.zero_grad(set_to_none=True)
            ema_update(G_ema, G, min(cfg.ema_decay, (1.0 + step) / (10.0 + step)))
            step += 1

            run_stats += np.array([loss_d.item(), loss_g.item(), d_real.float().mean().item(), d_fake.float().mean().item(), 1.0])
            info = f"D {loss_d.item():.3f} G {loss_g.item():.3f}"
            bar.update(task, completed=step, info=info)
            if cfg.log_every and step % cfg.log_every == 0:
                m = run_stats[:4] / max(run_stats[4], 1)
                console.print(f"step {step}: D {m[0]:.3f} G {m[1]:.3f} D(x) {m[2]:+.3f} D(G(z)) {m[3]:+.3f} "
                              f"({(time.time() - t_start) / max(step - start_step, 1):.2f} s/iter)")
                run_stats[:] = 0
            if step % steps_per_epoch == 0:
                dt = time.time() - t_epoch
                console.print(f"epoch {step // steps_per_epoch}: {dt:.0f} s ({dt / steps_per_epoch:.2f} s/iter) {info}")
                t_epoch = time.time()
            if step % cfg.eval_every == 0 or step == cfg.iters:
                rec = {"step": step, "loss_d": float(loss_d.item()), "loss_g": float(loss_g.item()),
                       "elapsed_s": elapsed_before + time.time() - t_start}
                if val_feats is not None:
                    recalibrate_bn(G_ema, calib_labels, cfg.seed, device, cfg.bn_calib)
                    fd = _val_fd(G_ema, classifier, va, val_feats, cfg, device)
                    rec["val_fd"] = fd
                    if fd < best["fd"]:
                        best = {"fd": fd, "step": step, "state": {k: v.detach().cpu().clone() for k, v in G_ema.state_dict().items()}}
                    console.print(f"step {step}: val FD {fd:.3f} (best {best['fd']:.3f} at {best['step']})")
                    _save_samples(G_ema, n_classes, out / "samples.png", cfg.seed, device)
                if cfg.dp:
                    rec["epsilon"] = float(engine.get_epsilon(cfg.delta))
                history.append(rec)
            if step % cfg.ckpt_every == 0:
                save()
    save(final=True)
    elapsed = elapsed_before + time.time() - t_start

    # --- the shipped generator: best-on-val EMA (not under DP), else the final EMA
    recalibrate_bn(G_ema, calib_labels, cfg.seed, device, cfg.bn_calib)
    final_G = copy.deepcopy(G_ema)
    if best["state"] is not None and not cfg.dp:
        final_G.load_state_dict(best["state"])
    summary = {
        "steps": step, "wall_s": elapsed, "s_per_iter": elapsed / max(step, 1), "batch_size": cfg.batch_size,
        "best_val_fd": None if best["step"] is None else best["fd"], "best_step": best["step"],
        "device": str(device), "history": history,
    }
    if cfg.dp:
        summary["dp"] = {**dp_info, "epsilon": float(engine.get_epsilon(cfg.delta)), "steps": step}
    (out / "history.json").write_text(json.dumps({"config": asdict(cfg), **summary}, indent=2, default=str))
    if classifier is None:
        classifier = Classifier(n_classes, DEFAULT_CONFIG["classifier_width"])  # placeholder, flagged in card
    bundle_cfg = {**DEFAULT_CONFIG, "nz": cfg.nz, "ngf": cfg.ngf, "ndf": cfg.ndf, "emb_dim": cfg.emb_dim,
                  "d_norm": _plain_module(D).norm, "classifier_width": classifier.width}
    from .registry import build_card

    card = build_card(trainset=ts, config=bundle_cfg, training={**asdict(cfg), **{k: v for k, v in summary.items() if k != "history"}},
                      classifier_trained=cfg.classifier is not None)
    save_bundle(out / "bundle.pt", generator=final_G.cpu(), classifier=classifier.cpu(),
                discriminator=_plain_module(D).cpu(), conditions=ts.conditions, config=bundle_cfg, card=card)
    console.print(f"GAN: {step} steps in {elapsed / 60:.1f} min ({summary['s_per_iter']:.2f} s/iter); "
                  f"bundle {out / 'bundle.pt'}")
    return summary


@torch.no_grad()
def _val_fd(G_ema, classifier, va: TrainSet, val_feats, cfg: GanConfig, device) -> float:
    labels = va.labels[np.arange(cfg.n_eval) % len(va)]
    fake = generate_images(G_ema, labels, seed=cfg.seed + 777, device=device, bf16=cfg.bf16)
    return frechet_from_features(embed_images(classifier, fake, device, bf16=cfg.bf16), val_feats)


def _save_samples(G_ema, n_classes: int, path: Path, seed: int, device, per_class: int = 6) -> None:
    """One row per condition (one-hot), fixed latents: watch training progress by eye."""
    from PIL import Image

    from .imaging import grid

    labels = np.repeat(np.eye(n_classes, dtype=np.float32), per_class, axis=0)
    imgs = generate_images(G_ema, labels, seed=seed + 4242, device=device)
    Image.fromarray(grid(imgs, per_class)).save(path)


def _plain_module(m):
    return getattr(m, "_module", m)  # Opacus' GradSampleModule wraps the real module


def _plain_optimizer(o):
    return getattr(o, "original_optimizer", o)


def _make_private(cfg: GanConfig, D, optD, tr: TrainSet, accountant_state, console):
    """Wrap D, its optimiser and a Poisson-sampled loader of the real data with Opacus."""
    from opacus import PrivacyEngine
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(D, strict=False)
    if errors:
        raise ValueError(f"discriminator is not Opacus-compatible: {errors}")
    ds = torch.utils.data.TensorDataset(torch.from_numpy(np.ascontiguousarray(tr.images)),
                                        torch.from_numpy(np.ascontiguousarray(tr.labels)))
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, shuffle=True,
                                         generator=step_generator(cfg.seed, -2))
    engine = PrivacyEngine(accountant="rdp")
    D, optD, loader = engine.make_private_with_epsilon(
        module=D, optimizer=optD, data_loader=loader, target_epsilon=cfg.epsilon, target_delta=cfg.delta,
        epochs=max(1, int(math.ceil(cfg.dp_epochs))), max_grad_norm=cfg.max_grad_norm,
    )
    if accountant_state is not None:
        engine.accountant.load_state_dict(accountant_state)
    sample_rate = cfg.batch_size / len(tr)
    info = {"target_epsilon": cfg.epsilon, "delta": cfg.delta, "noise_multiplier": float(optD.noise_multiplier),
            "max_grad_norm": cfg.max_grad_norm, "sample_rate": sample_rate, "accountant": "rdp",
            "planned_epochs": cfg.dp_epochs, "secure_mode": False, "mechanism": "DP-SGD (Opacus) on the discriminator; generator by post-processing"}
    console.print(f"DP: noise multiplier {info['noise_multiplier']:.3f}, clip {cfg.max_grad_norm}, "
                  f"sample rate {sample_rate:.4f}, target eps {cfg.epsilon} delta {cfg.delta}")
    return engine, D, optD, loader, info
