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
* **DiffAugment** (``augment``: translation, cutout, color) on real *and* generated images before
  every D call, in D's and G's steps (models/augment.py); LeCam and R1 as options
  (models/gan_steps.py). The measured recipe table is in models/README.md.
* **EMA of generator weights** (decay 0.999 with warm-up) is what ships; its BatchNorm statistics
  are re-estimated on generated batches before evaluation and saving.
* **Resume**: the batch indices and latents of step t come from a generator seeded with
  (seed, t), and ``RUN/ckpt.pt`` (models/gan_checkpoint.py) holds the rest, saved every
  ``ckpt_every`` steps or ``ckpt_minutes`` minutes, so a stopped run continued with the same
  command equals an uninterrupted one. Without a checkpoint, ``init_from`` continues from a
  bundle's G and D (the shipped default on a new machine).
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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .augment import parse_policy, translate
from .bundle import DEFAULT_CONFIG, save_bundle
from .classifier_train import ClassifierConfig, fit_classifier, load_classifier, macro_auc, train_classifier
from .gan_checkpoint import (
    RUN_FIELDS,
    bundle_architecture,
    inherited_verifier,
    load_checkpoint,
    restore,
    save_checkpoint,
    saved_config,
    warm_start,
)
from .gan_steps import GanState, Recipe, dp_gan_step, gan_step, recalibrate_bn
from .imaging import grid
from .metrics import frechet_distance
from .networks import Classifier, Discriminator, Generator
from .registry import build_card
from .sampling import (
    autocast,
    embed_images,
    generate_images,
    images_to_float,
    pick_device,
    predict_probs,
    sample_weights,
    step_generator,
)
from .sampling import console as _console
from .sampling import progress as _progress
from .trainset import TrainSet, load_trainset

# The classifier's and the shared helpers' names stay importable from here (the CLI, evaluation, tests).
__all__ = ["ClassifierConfig", "GanConfig", "autocast", "embed_images", "fit_classifier", "generate_images",
           "load_classifier", "macro_auc", "predict_probs", "sample_weights", "train_classifier", "train_gan",
           "translate"]


# --------------------------------------------------------------------------- GAN

@dataclass
class GanConfig:
    trainset: str
    out: str = "runs/gan"
    classifier: str | None = None  # classifier.pt or a bundle: val monitoring + the bundle's classifier
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
    augment: str = "translation"  # DiffAugment policy: translation, cutout, color (models/augment.py)
    lecam: float = 0.0  # LeCam weight (0: off)
    r1: float = 0.0  # R1 gamma (0: off)
    r1_every: int = 4
    eval_every: int = 500
    log_every: int = 0  # print running D/G statistics every n steps (0: once per epoch)
    ckpt_every: int = 250
    ckpt_minutes: float = 3.0  # also checkpoint when this long has passed since the last save
    n_eval: int = 730  # generated images per val check (the val split's size)
    bn_calib: int = 2048  # generated images to re-estimate the EMA generator's BatchNorm statistics
    device: str = "auto"
    bf16: bool = True
    threads: int = 2
    progress: bool = True
    resume: bool = True  # continue from OUT/ckpt.pt if present
    init_from: str | None = None  # bundle whose G and D start the run when OUT has no checkpoint
    # differential privacy
    dp: bool = False
    epsilon: float = 10.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    dp_epochs: float = 5.0  # epochs over the real data the noise is calibrated for
    extra: dict = field(default_factory=dict)


def _resolve_config(cfg: GanConfig, ck: dict | None, console) -> GanConfig:
    """A continued run keeps its own recipe and architecture; the command sets budget and cadence."""
    if ck is not None:
        saved = saved_config(ck)
        kept = {k: saved[k] for k in RUN_FIELDS if k in saved}
        changed = {k: (getattr(cfg, k), v) for k, v in kept.items() if getattr(cfg, k) != v}
        if changed:
            console.print(f"continuing the run's own recipe, ignoring {sorted(changed)} from the command")
        cfg = replace(cfg, **kept)
    elif cfg.init_from:
        cfg = replace(cfg, **bundle_architecture(cfg.init_from))
    if cfg.dp and cfg.d_norm == "sn":
        cfg = replace(cfg, d_norm="gn")
    if cfg.dp and (cfg.lecam or cfg.r1):
        raise ValueError("LeCam and R1 are not available with --dp (no per-sample gradients for R1; LeCam's "
                         "averages of D on real images would bypass the privacy accountant)")
    parse_policy(cfg.augment)
    return cfg


def _new_state(cfg: GanConfig, n_classes: int, device) -> GanState:
    torch.manual_seed(cfg.seed)  # weight init; everything after draws from (seed, step) generators
    # channels-last convolutions: a plain step took 1.2-1.3x as long on this project's CPUs
    G = Generator(cfg.nz, n_classes, cfg.ngf, cfg.emb_dim).to(device, memory_format=torch.channels_last)
    D = Discriminator(n_classes, cfg.ndf, cfg.d_norm).to(device, memory_format=torch.channels_last)
    return GanState(G=G, D=D, G_ema=copy.deepcopy(G).eval().requires_grad_(False),
                    optG=torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2)),
                    optD=torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2)))


def _plain_batches(cfg: GanConfig, tr: TrainSet, device):
    """Step t's real batch: sqrt-balanced draw from (seed, t); fakes get the same label mix."""
    x_all = torch.from_numpy(np.ascontiguousarray(tr.images))
    y_all = torch.from_numpy(np.ascontiguousarray(tr.labels)).float()
    weights = torch.from_numpy(sample_weights(tr.labels, cfg.balance))

    def draw(g):
        idx = torch.multinomial(weights, cfg.batch_size, replacement=True, generator=g)
        y = y_all[idx].to(device)
        return images_to_float(x_all[idx]).to(device, memory_format=torch.channels_last), y, y

    return draw


def _dp_batches(loader, n_classes: int, device):
    """Poisson-sampled real batches from Opacus' loader; fake labels uniform (public), from (seed, t)."""
    state = {"it": iter(loader)}
    eye = np.eye(n_classes, dtype=np.float32)

    def draw(g):
        try:
            xb, yb = next(state["it"])
        except StopIteration:
            state["it"] = iter(loader)
            xb, yb = next(state["it"])
        if len(xb) == 0:  # Poisson sampling may draw an empty batch (p ~ e^-batch): nothing to learn
            return None
        y_fake = torch.from_numpy(eye[torch.randint(0, n_classes, (len(xb),), generator=g).numpy()]).to(device)
        return images_to_float(xb).to(device), yb.float().to(device), y_fake

    return draw


def train_gan(cfg: GanConfig) -> dict:
    """Train (or continue) a GAN run in ``cfg.out``; writes ckpt.pt, history.json and bundle.pt."""
    torch.set_num_threads(cfg.threads)
    console = _console()
    device = pick_device(cfg.device)
    out = Path(cfg.out)
    ckpt_path = out / "ckpt.pt"
    ck = load_checkpoint(ckpt_path) if cfg.resume and ckpt_path.exists() else None
    cfg = _resolve_config(cfg, ck, console)
    out.mkdir(parents=True, exist_ok=True)
    ts = load_trainset(cfg.trainset)
    tr, va = ts.split("train"), ts.split("val")
    n_classes = len(ts.conditions)
    st = _new_state(cfg, n_classes, device)
    run = {"elapsed_s": 0.0, "history": [], "best": {"fd": float("inf"), "step": None, "state": None},
           "dp_accountant": None, "warm_start": None}
    if ck is not None:
        run.update(restore(st, ck))
        console.print(f"resumed {ckpt_path} at step {st.step}")
    elif cfg.init_from:
        run["warm_start"] = warm_start(st, cfg.init_from)
        console.print(f"continuing from {cfg.init_from}'s G and D at its step {st.step}")

    classifier, val_feats = None, None
    if cfg.classifier:
        classifier, _ = load_classifier(cfg.classifier, device)
        if not cfg.dp:
            val_feats = embed_images(classifier, va.images, device, bf16=cfg.bf16)

    engine, dp_info, sampler_rng = None, None, None
    steps_per_epoch = max(1, math.ceil(len(tr) / cfg.batch_size))
    if cfg.dp:
        engine, st.D, st.optD, loader, dp_info, sampler_rng = _make_private(cfg, st.D, st.optD, tr, run, console)
        draw, step_fn, calib_labels = _dp_batches(loader, n_classes, device), dp_gan_step, np.eye(n_classes, dtype=np.float32)
        # the noise was calibrated for dp_epochs: running longer would overspend epsilon
        cfg = replace(cfg, iters=min(cfg.iters, math.ceil(cfg.dp_epochs * steps_per_epoch)))
    else:
        draw, step_fn, calib_labels = _plain_batches(cfg, tr, device), gan_step, tr.labels
    recipe = Recipe(policy=parse_policy(cfg.augment), shift=cfg.shift, lecam=cfg.lecam, r1=cfg.r1,
                    r1_every=cfg.r1_every, bf16=cfg.bf16)
    t_start = time.time()

    def save() -> None:
        save_checkpoint(ckpt_path, st, config=asdict(cfg), elapsed_s=run["elapsed_s"] + time.time() - t_start,
                        history=run["history"], best=run["best"],
                        accountant_state=engine.accountant.state_dict() if engine else None,
                        sampler_rng=sampler_rng, warm_start=run["warm_start"])

    deadline = t_start + cfg.minutes * 60 if cfg.minutes else None
    last_save, t_epoch, start_step, run_stats = time.time(), time.time(), st.step, np.zeros(5)
    console.print(f"GAN: {len(tr)} train images, {steps_per_epoch} steps/epoch, batch {cfg.batch_size}, device "
                  f"{device}, augment {cfg.augment}, LeCam {cfg.lecam}, R1 {cfg.r1}, from step {st.step} to "
                  f"{cfg.iters}" + (" [DP]" if cfg.dp else ""))
    with _progress(console, disable=not cfg.progress) as bar:
        task = bar.add_task("gan", total=cfg.iters, completed=st.step, info="")
        while st.step < cfg.iters and (deadline is None or time.time() < deadline):
            g = step_generator(cfg.seed, st.step)
            st.G.train()
            st.D.train()
            batch = draw(g)
            if batch is None:
                st.step += 1
                continue
            z = torch.randn(len(batch[0]), cfg.nz, generator=g).to(device)
            s = step_fn(st, *batch, z, recipe, g, device, cfg.ema_decay)
            step = st.step
            run_stats += np.array([s["loss_d"], s["loss_g"], s["d_real"], s["d_fake"], 1.0])
            info = f"D {s['loss_d']:.3f} G {s['loss_g']:.3f}"
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
                rec = {"step": step, "loss_d": s["loss_d"], "loss_g": s["loss_g"],
                       "elapsed_s": run["elapsed_s"] + time.time() - t_start}
                if val_feats is not None:
                    rec["val_fd"] = _val_check(st, classifier, va, val_feats, calib_labels, cfg, device, run, out, console)
                if engine is not None:
                    rec["epsilon"] = float(engine.get_epsilon(cfg.delta))
                run["history"].append(rec)
            if step % cfg.ckpt_every == 0 or time.time() - last_save > cfg.ckpt_minutes * 60:
                save()
                last_save = time.time()
    if val_feats is not None and (not run["history"] or run["history"][-1]["step"] != st.step):
        # a wall-clock budget ended the loop between checks: score what will ship
        run["history"].append({"step": st.step, "elapsed_s": run["elapsed_s"] + time.time() - t_start,
                               "val_fd": _val_check(st, classifier, va, val_feats, calib_labels, cfg, device, run,
                                                    out, console)})
    save()
    return _package(cfg, st, ts, classifier, calib_labels, run, engine, dp_info, time.time() - t_start, device, out,
                    console)


def _val_check(st, classifier, va, val_feats, calib_labels, cfg, device, run, out, console) -> float:
    recalibrate_bn(st.G_ema, calib_labels, cfg.seed, device, cfg.bn_calib)
    labels = va.labels[np.arange(cfg.n_eval) % len(va)]
    fake = generate_images(st.G_ema, labels, seed=cfg.seed + 777, device=device, bf16=cfg.bf16)
    fd = frechet_distance(embed_images(classifier, fake, device, bf16=cfg.bf16), val_feats)
    best = run["best"]
    if fd < best["fd"]:
        run["best"] = best = {"fd": fd, "step": st.step,
                              "state": {k: v.detach().cpu().clone() for k, v in st.G_ema.state_dict().items()}}
    console.print(f"step {st.step}: val FD {fd:.3f} (best {best['fd']:.3f} at {best['step']})")
    _save_samples(st.G_ema, len(va.conditions), out / "samples.png", cfg.seed, device)
    return fd


def _package(cfg, st, ts, classifier, calib_labels, run, engine, dp_info, wall_s, device, out, console) -> dict:
    """The shipped generator (best-on-val EMA, not under DP; else the final EMA) in a bundle + history."""
    elapsed = run["elapsed_s"] + wall_s
    recalibrate_bn(st.G_ema, calib_labels, cfg.seed, device, cfg.bn_calib)
    final_G = copy.deepcopy(st.G_ema)
    best = run["best"]
    if best["state"] is not None and not cfg.dp:
        final_G.load_state_dict(best["state"])
    step = st.step
    first_step = (run.get("warm_start") or {}).get("bundle_step", 0)  # steps a warm start inherited
    summary = {
        "steps": step, "wall_s": elapsed, "s_per_iter": elapsed / max(step - first_step, 1), "batch_size": cfg.batch_size,
        "best_val_fd": None if best["step"] is None else best["fd"], "best_step": best["step"],
        "device": str(device), "history": run["history"],
    }
    if run.get("warm_start"):
        summary["warm_start"] = run["warm_start"]
    if engine is not None:
        summary["dp"] = {**dp_info, "epsilon": float(engine.get_epsilon(cfg.delta)), "steps": step}
    (out / "history.json").write_text(json.dumps({"config": asdict(cfg), **summary}, indent=2, default=str))
    n_classes = len(ts.conditions)
    if classifier is None:
        classifier = Classifier(n_classes, DEFAULT_CONFIG["classifier_width"])  # placeholder, flagged in card
    D = getattr(st.D, "_module", st.D)
    bundle_cfg = {**DEFAULT_CONFIG, "nz": cfg.nz, "ngf": cfg.ngf, "ndf": cfg.ndf, "emb_dim": cfg.emb_dim,
                  "d_norm": D.norm, "classifier_width": classifier.width}
    card = build_card(trainset=ts, config=bundle_cfg,
                      training={**asdict(cfg), **{k: v for k, v in summary.items() if k != "history"}},
                      classifier_trained=cfg.classifier is not None)
    verifier, reid_section = inherited_verifier(run.get("warm_start"), console)
    if reid_section:
        card["privacy"] = {"reidentification": reid_section}
        card["caveats"] = [*card["caveats"], *filter(None, [reid_section.get("does_not_protect_against")])]
    save_bundle(out / "bundle.pt", generator=final_G.cpu(), classifier=classifier.cpu(), discriminator=D.cpu(),
                conditions=ts.conditions, config=bundle_cfg, card=card, verifier=verifier)
    console.print(f"GAN: {step - first_step} steps (to step {step}) in {elapsed / 60:.1f} min ({summary['s_per_iter']:.2f} s/iter); "
                  f"bundle {out / 'bundle.pt'}")
    return summary


def _save_samples(G_ema, n_classes: int, path: Path, seed: int, device, per_class: int = 6) -> None:
    """One row per condition (one-hot), fixed latents: watch training progress by eye."""
    labels = np.repeat(np.eye(n_classes, dtype=np.float32), per_class, axis=0)
    imgs = generate_images(G_ema, labels, seed=seed + 4242, device=device)
    Image.fromarray(grid(imgs, per_class)).save(path)


def _make_private(cfg: GanConfig, D, optD, tr: TrainSet, run: dict, console):
    """Wrap D, its optimiser and a Poisson-sampled loader of the real data with Opacus."""
    from opacus import PrivacyEngine
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(D, strict=False)
    if errors:
        raise ValueError(f"discriminator is not Opacus-compatible: {errors}")
    ds = torch.utils.data.TensorDataset(torch.from_numpy(np.ascontiguousarray(tr.images)),
                                        torch.from_numpy(np.ascontiguousarray(tr.labels)))
    sampler_rng = step_generator(cfg.seed, -2)
    if run.get("sampler_rng") is not None:  # a continued run draws the batches it would have drawn
        sampler_rng.set_state(run["sampler_rng"])
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, generator=sampler_rng)
    engine = PrivacyEngine(accountant="rdp")
    D, optD, loader = engine.make_private_with_epsilon(
        module=D, optimizer=optD, data_loader=loader, target_epsilon=cfg.epsilon, target_delta=cfg.delta,
        epochs=max(1, math.ceil(cfg.dp_epochs)), max_grad_norm=cfg.max_grad_norm,
    )
    if run.get("dp_accountant") is not None:
        engine.accountant.load_state_dict(run["dp_accountant"])
    sample_rate = cfg.batch_size / len(tr)
    info = {"target_epsilon": cfg.epsilon, "delta": cfg.delta, "noise_multiplier": float(optD.noise_multiplier),
            "max_grad_norm": cfg.max_grad_norm, "sample_rate": sample_rate, "accountant": "rdp",
            "planned_epochs": cfg.dp_epochs, "secure_mode": False,
            "mechanism": "DP-SGD (Opacus) on the discriminator; generator by post-processing"}
    console.print(f"DP: noise multiplier {info['noise_multiplier']:.3f}, clip {cfg.max_grad_norm}, "
                  f"sample rate {sample_rate:.4f}, target eps {cfg.epsilon} delta {cfg.delta}")
    return engine, D, optD, loader, info, sampler_rng
