"""The seed study's experiment: does topping up the classes with synthetic images help a classifier?

Arm *real*: a classifier trained on the real train split as it is (natural, imbalanced frequencies).
Arm *real+synthetic*: the same images plus synthetic ones generated for each under-represented class
until every class has ``target`` images (default: the largest class's count, i.e. balanced).
Same recipe, same seed, natural sampling in both (the balance comes from the data, not a sampler).
Per class, the decision threshold is the one that maximises balanced accuracy on val; on the test
split we report sensitivity (accuracy on the class's images), specificity, balanced accuracy and
ROC AUC, for the seed's five classes (No Finding, Cardiomegaly, Effusion, Edema, Pneumothorax:
images carrying any of them, labels restricted to them) and for all 16; mean and standard
deviation over seeds.

    python -m models.seed_experiment --bundle models/checkpoints/default/bundle.pt --trainset runs/trainset
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from .bundle import load_bundle
from .classifier_train import fit_classifier
from .conditions import RARE_CONDITIONS
from .metrics import roc_auc
from .registry import write_bundle
from .sampling import generate_images, pick_device, predict_probs
from .trainset import load_trainset

SEED_CLASSES = ["No Finding", "Cardiomegaly", "Effusion", "Edema", "Pneumothorax"]


def _subset(split, cols: list[int]):
    keep = split.labels[:, cols].sum(1) > 0
    return split.images[keep], split.labels[keep][:, cols].astype(np.float32)


def best_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold that maximises balanced accuracy on (y, p); 0.5 when y has one class only."""
    if y.min() == y.max():
        return 0.5
    cands = np.unique(p)
    best, best_t = -1.0, 0.5
    for t in cands:
        pred = p >= t
        ba = 0.5 * (pred[y > 0].mean() + (~pred[y == 0]).mean())
        if ba > best:
            best, best_t = ba, float(t)
    return best_t


def class_metrics(y: np.ndarray, p: np.ndarray, t: float) -> dict:
    pred = p >= t
    pos, neg = y > 0, y == 0
    sens = float(pred[pos].mean()) if pos.any() else None
    spec = float((~pred[neg]).mean()) if neg.any() else None
    ba = None if sens is None or spec is None else 0.5 * (sens + spec)
    return {"n_pos": int(pos.sum()), "threshold": t, "sensitivity": sens, "specificity": spec,
            "balanced_accuracy": ba, "auc": roc_auc(y, p)}


def synthetic_topup(G, labels: np.ndarray, cols: list[int], n_conditions: int, target: int, seed: int, device):
    """Images generated for each class below ``target`` until it has ``target``; one-hot rows."""
    counts = labels.sum(0).astype(int)
    rows_sub, rows_full = [], []
    for j, c in enumerate(cols):
        n = max(0, target - counts[j])
        sub = np.zeros((n, len(cols)), np.float32)
        sub[:, j] = 1
        full = np.zeros((n, n_conditions), np.float32)
        full[:, c] = 1
        rows_sub.append(sub)
        rows_full.append(full)
    y_sub, y_full = np.concatenate(rows_sub), np.concatenate(rows_full)
    return generate_images(G, y_full, seed=seed, device=device), y_sub


def run(bundle_path, trainset, classes: list[str] | None, seeds=(0, 1, 2), target: int | None = None,
        epochs: float = 4.0, width: int = 16, device: str = "cpu", max_steps: int | None = None) -> dict:
    dev = pick_device(device)
    ts = load_trainset(trainset)
    names = classes or ts.conditions
    cols = [ts.conditions.index(c) for c in names]
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = (_subset(ts.split(s), cols) for s in ("train", "val", "test"))
    counts = y_tr.sum(0).astype(int)
    target = int(target or counts.max())
    G = load_bundle(bundle_path, device=dev).generator
    t0 = time.time()
    x_syn, y_syn = synthetic_topup(G, y_tr, cols, len(ts.conditions), target, seed=4321, device=dev)
    gen_s = time.time() - t0
    arms = {"real": (x_tr, y_tr), "real+synthetic": (np.concatenate([x_tr, x_syn]), np.concatenate([y_tr, y_syn]))}
    runs: dict = {a: [] for a in arms}
    for seed in seeds:
        for arm, (x, y) in arms.items():
            model, info = fit_classifier(x, y, val_images=x_va, val_labels=y_va, width=width, epochs=epochs,
                                         balance="none", seed=seed, device=dev, progress=False,
                                         max_steps=max_steps, desc=f"{arm} seed {seed}")
            p_va, p_te = predict_probs(model, x_va, dev), predict_probs(model, x_te, dev)
            per = {c: class_metrics(y_te[:, j], p_te[:, j], best_threshold(y_va[:, j], p_va[:, j]))
                   for j, c in enumerate(names)}
            runs[arm].append({"seed": seed, "per_class": per, "steps": info["steps"]})
    return {"classes": names, "n_train_real": len(x_tr), "n_synthetic": len(x_syn), "target_per_class": target,
            "train_counts": dict(zip(names, counts.tolist())), "n_val": len(x_va), "n_test": len(x_te),
            "test_positives": dict(zip(names, y_te.sum(0).astype(int).tolist())), "seeds": list(seeds),
            "epochs": epochs, "width": width, "generation_s": gen_s, "summary": summarise(runs, names),
            "runs": runs}


def _ms(values) -> dict:
    v = [x for x in values if x is not None]
    return {"mean": float(np.mean(v)) if v else None, "sd": float(np.std(v, ddof=1)) if len(v) > 1 else None,
            "n_seeds": len(v)}


def summarise(runs: dict, names: list[str]) -> dict:
    rare = [c for c in names if c in RARE_CONDITIONS]
    out = {}
    for arm, rs in runs.items():
        per = {c: {m: _ms([r["per_class"][c][m] for r in rs]) for m in ("sensitivity", "balanced_accuracy", "auc")}
               for c in names}

        def macro(r, m, keys):
            v = [r["per_class"][c][m] for c in keys if r["per_class"][c][m] is not None]
            return float(np.mean(v)) if v else None

        out[arm] = {"per_class": per,
                    "macro_balanced_accuracy": _ms([macro(r, "balanced_accuracy", names) for r in rs]),
                    "macro_auc": _ms([macro(r, "auc", names) for r in rs]),
                    "rare_balanced_accuracy": _ms([macro(r, "balanced_accuracy", rare) for r in rs]),
                    "rare_auc": _ms([macro(r, "auc", rare) for r in rs]), "rare_classes": rare}
    a, b = runs["real"], runs["real+synthetic"]
    out["rare_balanced_accuracy_gain"] = _ms([
        (np.mean([y["per_class"][c]["balanced_accuracy"] for c in rare if y["per_class"][c]["balanced_accuracy"] is not None])
         - np.mean([x["per_class"][c]["balanced_accuracy"] for c in rare if x["per_class"][c]["balanced_accuracy"] is not None]))
        for x, y in zip(a, b)]) if rare else None
    return out


CARD_KEY = "augmentation_experiment"


def card_entry(res: dict, command: str) -> dict:
    """What the model card keeps of a run: sizes, the per-class and macro summaries over seeds, the command."""
    return {k: res[k] for k in ("classes", "n_train_real", "n_synthetic", "target_per_class", "train_counts", "n_val",
                                "n_test", "test_positives", "seeds", "epochs", "width", "summary")} | {"command": command}


def write_card_entry(bundle_path, key: str, entry: dict) -> None:
    """Store one run (``key``: which classes) under the card's augmentation experiment, beside the other runs."""
    b = load_bundle(bundle_path)
    b.card = {**b.card, CARD_KEY: {**(b.card.get(CARD_KEY) or {}), key: entry}}
    write_bundle(bundle_path, b)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--trainset", required=True)
    p.add_argument("--classes", default="seed", help="'seed' (the five), 'all' (16) or comma-separated names")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--target", type=int, default=None, help="images per class after the top-up (default: largest)")
    p.add_argument("--epochs", type=float, default=4.0)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/seed_experiment.json")
    p.add_argument("--write-card", action="store_true",
                   help="store the summary in the bundle's card (section augmentation_experiment, under the classes)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    classes = SEED_CLASSES if a.classes == "seed" else None if a.classes == "all" else a.classes.split(",")
    res = run(a.bundle, a.trainset, classes, tuple(int(s) for s in a.seeds.split(",")), a.target, a.epochs,
              a.width, a.device)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    if a.write_card:
        command = "python -m models.seed_experiment " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items()
            if k in ("bundle", "trainset", "classes", "seeds", "target", "epochs", "width") and v is not None)
        write_card_entry(a.bundle, a.classes, card_entry(res, command))
    s = res["summary"]
    for arm in ("real", "real+synthetic"):
        m = s[arm]
        print(f"{arm:15s} macro BA {m['macro_balanced_accuracy']['mean']:.3f}±{m['macro_balanced_accuracy']['sd'] or 0:.3f} "
              f"macro AUC {m['macro_auc']['mean']:.3f}±{m['macro_auc']['sd'] or 0:.3f} "
              f"rare BA {m['rare_balanced_accuracy']['mean']}")
    print("rare BA gain:", s["rare_balanced_accuracy_gain"])


if __name__ == "__main__":
    main()
