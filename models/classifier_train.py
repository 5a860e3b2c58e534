"""The multi-label condition classifier's training (``xraysynth train classifier``), also used by
evaluation (TSTR, augmentation) and the seed's experiment. Same square-root class balance as the GAN.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .augment import translate
from .bundle import load_bundle
from .metrics import roc_auc
from .networks import Classifier
from .sampling import autocast, images_to_float, pick_device, predict_probs, sample_weights, step_generator
from .sampling import console as _console
from .sampling import progress as _progress
from .trainset import load_trainset


def macro_auc(y_true: np.ndarray, scores: np.ndarray) -> tuple[float, list[float | None]]:
    """Mean ROC AUC over classes that have both positives and negatives; per-class list (None = undefined)."""
    per = [roc_auc(y_true[:, k], scores[:, k]) for k in range(y_true.shape[1])]
    valid = [a for a in per if a is not None]
    return (float(np.mean(valid)) if valid else float("nan")), per


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
    total = max_steps or round(epochs * steps_per_epoch)
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
    """A ``classifier.pt`` from ``train classifier``, or the classifier inside a bundle."""
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if "format" in ck:
        b = load_bundle(path)
        return b.classifier.to(device).eval(), {"conditions": b.conditions, "width": b.classifier.width}
    m = Classifier(len(ck["conditions"]), ck["width"])
    m.load_state_dict(ck["state"])
    return m.to(device).eval(), ck
