"""``xraysynth evaluate MODEL``: the metrics section of the model card, scored on the test split.

Feature space: the bundle's own condition classifier (trained on real train images), global-average-
pooled penultimate layer. Every number names its n, split and extractor, and sits next to its real-
vs-real reference, because absolute Fréchet distances in a private feature space mean nothing alone.

* Fréchet distance (FD) synthetic-vs-test next to the floor real-train-vs-test, overall and per
  condition; synthetic sets are generated with the same label rows / counts as the real train side,
  so both sides of the ratio carry the same sample-size bias.
* Precision / recall (k-NN manifolds, Kynkäänniemi et al. 2019, k=3) and coverage (Naeem et al.
  2020, k=5), synthetic (test label rows) vs real test, plus the real-vs-real reference.
* Per-condition fidelity: the real-trained classifier's AUC for condition c on synthetic images
  (generated with the test split's label rows) vs on the real test images.
* TSTR: a classifier trained on synthetic images only (train label rows), tested on real test; its
  macro AUC gap to the same classifier trained on real train (TRTR).
* The study's experiment: real-only vs real + synthetic top-up of under-represented conditions,
  per-condition AUC and recall at 0.5, rare conditions highlighted.
* Every one of these again on the NIH-only test subset: source and class are confounded (Pneumonia
  is mostly paediatric Kermany, COVID-19 only from COVID collections), and NIH is the one source
  that carries all 14 findings.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .bundle import load_bundle
from .classifier_train import fit_classifier
from .conditions import RARE_CONDITIONS
from .metrics import frechet_distance, roc_auc
from .registry import card_json as card_text
from .registry import write_bundle
from .sampling import console as _console
from .sampling import embed_images, generate_images, pick_device, predict_probs
from .trainset import load_trainset

# --------------------------------------------------------------------------- metrics (pure numpy)


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(d2, 0.0))


def _kth_radius(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each row to its k-th nearest other row."""
    d = _pairwise(x, x)
    k = min(k, len(x) - 1)
    return np.partition(d, k, axis=1)[:, k]  # column 0 is the point itself (distance 0)


def precision_recall_coverage(real: np.ndarray, fake: np.ndarray, k_pr: int = 3, k_cov: int = 5) -> dict:
    """k-NN manifold precision/recall (Kynkäänniemi 2019) and coverage (Naeem 2020)."""
    d = _pairwise(real, fake)  # [n_real, n_fake]
    r_real = _kth_radius(real, k_pr)
    r_fake = _kth_radius(fake, k_pr)
    precision = float((d <= r_real[:, None]).any(axis=0).mean())  # fake inside some real ball
    recall = float((d <= r_fake[None, :]).any(axis=1).mean())  # real inside some fake ball
    r_cov = _kth_radius(real, k_cov)
    coverage = float((d <= r_cov[:, None]).any(axis=1).mean())  # real ball containing some fake
    return {"precision": precision, "recall": recall, "coverage": coverage, "k_precision_recall": k_pr,
            "k_coverage": k_cov, "n_real": int(len(real)), "n_fake": int(len(fake))}


def per_class_auc(labels: np.ndarray, probs: np.ndarray, conditions: list[str]) -> dict[str, float | None]:
    return {c: roc_auc(labels[:, k], probs[:, k]) for k, c in enumerate(conditions)}


def macro(values) -> float | None:
    v = [x for x in values if x is not None and np.isfinite(x)]
    return float(np.mean(v)) if v else None


def recall_at(labels: np.ndarray, probs: np.ndarray, conditions: list[str], thr: float = 0.5) -> dict:
    out = {}
    for k, c in enumerate(conditions):
        pos = labels[:, k] > 0
        out[c] = float((probs[pos, k] >= thr).mean()) if pos.any() else None
    return out


# --------------------------------------------------------------------------- the evaluation run


@dataclass
class EvalConfig:
    model: str
    trainset: str
    out: str | None = None  # bundle with metrics written here; None = in place
    card_json: str | None = None
    quick: bool = False  # skip TSTR and the augmentation experiment (they train classifiers)
    eval_epochs: float = 6.0
    eval_width: int = 16
    fidelity_repeats: int = 3  # synthetic copies of the test label rows for per-condition fidelity
    topup_to: int = 300  # augmentation: synthetic images until each condition has this many
    membership: bool = True  # run models.privacy.membership_inference when importable
    seed: int = 0
    device: str = "auto"
    bf16: bool = True
    threads: int = 2


def _fd_block(real_a, real_b, syn, name_a: str, name_b: str) -> dict:
    floor = frechet_distance(real_a, real_b)
    fd = frechet_distance(syn, real_b)
    return {"fd": fd, "floor": floor, "ratio": fd / floor if floor > 0 else None,
            "n_synthetic": int(len(syn)), "n_reference": int(len(real_b)), "n_floor_side": int(len(real_a)),
            "floor_is": f"FD({name_a}, {name_b})"}


def evaluate_bundle(cfg: EvalConfig) -> dict:
    torch.set_num_threads(cfg.threads)
    console = _console()
    device = pick_device(cfg.device)
    t0 = time.time()
    bundle = load_bundle(cfg.model, device=device)
    ts = load_trainset(cfg.trainset)
    conds = ts.conditions
    if list(bundle.conditions) != list(conds):
        raise ValueError("bundle and training set have different condition lists")
    tr, te = ts.split("train"), ts.split("test")
    nih_tr, nih_te = tr.sources == "nih", te.sources == "nih"
    clf, G = bundle.classifier, bundle.generator
    extractor = (f"xraysynth condition classifier (bundle), global-average-pooled penultimate features, "
                 f"{clf.embed_dim}-d")
    seed = cfg.seed + 10_000  # latents disjoint from anything a dataset request would use by default

    def gen(labels, s):
        return generate_images(G, np.asarray(labels, np.float32), seed=s, device=device, bf16=cfg.bf16)

    def emb(images):
        return embed_images(clf, images, device, bf16=cfg.bf16)

    console.print(f"evaluate: embedding {len(tr)} train / {len(te)} test real images")
    f_tr, f_te = emb(tr.images), emb(te.images)

    # ---- overall Fréchet distance: synthetic with the train split's label rows vs test
    console.print("evaluate: generating the synthetic train-label set")
    syn_tr = gen(tr.labels, seed)
    f_syn_tr = emb(syn_tr)
    metrics: dict = {
        "extractor": extractor,
        "split": "test",
        "reference": "real test split",
        "frechet": {"all_sources": _fd_block(f_tr, f_te, f_syn_tr, "real train", "real test"),
                    "nih_only": _fd_block(f_tr[nih_tr], f_te[nih_te], f_syn_tr[nih_tr], "real train NIH", "real test NIH")},
    }
    metrics["frechet"]["all_sources"]["synthetic_labels"] = "train split label rows"
    metrics["frechet"]["nih_only"]["synthetic_labels"] = "train split NIH label rows"

    # ---- per-condition FD: one-hot requests (what researchers get), n = that condition's train count
    per_cond, per_cond_nih = {}, {}
    for k, c in enumerate(conds):
        m_tr, m_te = tr.labels[:, k] > 0, te.labels[:, k] > 0
        if m_tr.sum() < 2 or m_te.sum() < 2:
            continue
        onehot = np.zeros((int(m_tr.sum()), len(conds)), np.float32)
        onehot[:, k] = 1
        f_syn = emb(gen(onehot, seed + 1 + k))
        per_cond[c] = _fd_block(f_tr[m_tr], f_te[m_te], f_syn, f"real train {c}", f"real test {c}")
        mn_tr, mn_te = m_tr & nih_tr, m_te & nih_te
        if mn_tr.sum() >= 2 and mn_te.sum() >= 2:
            per_cond_nih[c] = _fd_block(f_tr[mn_tr], f_te[mn_te], f_syn[: int(mn_tr.sum())],
                                        f"real train NIH {c}", f"real test NIH {c}")
    metrics["frechet"]["per_condition"] = per_cond
    metrics["frechet"]["per_condition_nih_only"] = per_cond_nih
    metrics["frechet"]["per_condition_note"] = ("synthetic: one-hot requests, as many as the condition's real "
                                                "train images; floor: real train vs real test of that condition")
    ratios = [v["ratio"] for v in per_cond.values() if v["ratio"] is not None]
    metrics["frechet"]["per_condition_ratio_range"] = [float(min(ratios)), float(max(ratios))] if ratios else None

    # ---- precision / recall / coverage: synthetic with the test label rows vs real test
    console.print("evaluate: precision / recall / coverage")
    syn_te = gen(te.labels, seed + 100)
    f_syn_te = emb(syn_te)
    rng = np.random.default_rng(cfg.seed)
    ref_idx = rng.choice(len(f_tr), size=min(len(f_tr), len(f_te)), replace=False)
    prc = {"synthetic_vs_test": precision_recall_coverage(f_te, f_syn_te),
           "real_train_vs_test": precision_recall_coverage(f_te, f_tr[ref_idx])}
    nref = np.flatnonzero(nih_tr)
    nref = rng.choice(nref, size=min(len(nref), int(nih_te.sum())), replace=False)
    prc_nih = {"synthetic_vs_test": precision_recall_coverage(f_te[nih_te], f_syn_te[nih_te]),
               "real_train_vs_test": precision_recall_coverage(f_te[nih_te], f_tr[nref])}
    metrics["precision_recall_coverage"] = {"all_sources": prc, "nih_only": prc_nih}

    # ---- per-condition fidelity: real-trained classifier's AUC on synthetic vs on real test
    console.print("evaluate: per-condition fidelity")
    reps = max(1, cfg.fidelity_repeats)
    fid_labels = np.tile(te.labels, (reps, 1))
    syn_fid = np.concatenate([syn_te] + [gen(te.labels, seed + 200 + r) for r in range(1, reps)])
    p_real = predict_probs(clf, te.images, device, bf16=cfg.bf16)
    p_syn = predict_probs(clf, syn_fid, device, bf16=cfg.bf16)
    fid_src = np.tile(te.sources, reps)

    def fidelity(real_mask, syn_mask):
        out = {}
        for k, c in enumerate(conds):
            a_real = roc_auc(te.labels[real_mask, k], p_real[real_mask, k])
            a_syn = roc_auc(fid_labels[syn_mask, k], p_syn[syn_mask, k])
            out[c] = {"auc_real": a_real, "auc_synthetic": a_syn,
                      "ratio": (a_syn / a_real) if (a_real and a_syn is not None) else None,
                      "n_real_positive": int(te.labels[real_mask, k].sum()),
                      "n_synthetic_positive": int(fid_labels[syn_mask, k].sum())}
        return out

    fid_all = fidelity(np.ones(len(te), bool), np.ones(len(fid_labels), bool))
    fid_nih = fidelity(nih_te, fid_src == "nih")
    metrics["fidelity"] = {
        "all_sources": fid_all, "nih_only": fid_nih,
        "note": f"synthetic set = the test split's label rows x{reps} (different latents)",
        "macro_auc_real": macro([v["auc_real"] for v in fid_all.values()]),
        "macro_auc_synthetic": macro([v["auc_synthetic"] for v in fid_all.values()]),
    }

    # ---- TSTR and the augmentation experiment (train small classifiers)
    if not cfg.quick:
        metrics.update(_classifier_experiments(cfg, ts, tr, te, nih_te, syn_tr, gen, seed, device, console,
                                               fit_classifier, predict_probs))

    # ---- membership inference (models/privacy), if present
    try:
        if not cfg.membership:
            raise ImportError("skipped")
        # lazy: membership inference is optional (a build without models/privacy still evaluates)
        from .privacy import membership_inference

        console.print("evaluate: membership inference (models.privacy)")
        metrics["membership_inference"] = membership_inference(bundle, ts)
    except ImportError:
        metrics["membership_inference"] = None
    except Exception as e:  # noqa: BLE001 — never lose the quality metrics over the privacy attack
        metrics["membership_inference"] = {"error": f"{type(e).__name__}: {e}"}

    metrics["goals"] = _goals(metrics)
    metrics["evaluated_at_s"] = time.time() - t0
    metrics["config"] = asdict(cfg)

    bundle.card = card = {**bundle.card, "metrics": metrics}
    out = Path(cfg.out or cfg.model)
    write_bundle(out, bundle)
    if cfg.card_json:
        Path(cfg.card_json).write_text(card_text(card))
    print_report(metrics, console)
    console.print(f"evaluate: {time.time() - t0:.0f} s; card metrics written to {out}")
    return metrics


def _classifier_experiments(cfg, ts, tr, te, nih_te, syn_tr, gen, seed, device, console, fit, predict) -> dict:
    conds = ts.conditions
    common = dict(width=cfg.eval_width, epochs=cfg.eval_epochs, seed=cfg.seed, device=device, bf16=cfg.bf16,
                  progress=False, console=console)

    def scores(model):
        p = predict(model, te.images, device, bf16=cfg.bf16)
        res = {}
        for name, m in (("all_sources", np.ones(len(te), bool)), ("nih_only", nih_te)):
            auc = per_class_auc(te.labels[m], p[m], conds)
            res[name] = {"macro_auc": macro(auc.values()), "auc": auc, "recall_at_0.5": recall_at(te.labels[m], p[m], conds)}
        return res

    # TSTR vs TRTR: identical classifier recipe (sqrt-balanced sampling), fixed epochs, no selection.
    console.print("evaluate: TRTR classifier (real train)")
    m_real, i_real = fit(tr.images, tr.labels, balance="sqrt", desc="TRTR", **common)
    console.print("evaluate: TSTR classifier (synthetic, train label rows)")
    m_syn, i_syn = fit(syn_tr, tr.labels, balance="sqrt", desc="TSTR", **common)
    s_real, s_syn = scores(m_real), scores(m_syn)
    tstr = {}
    for name in ("all_sources", "nih_only"):
        a, b = s_real[name]["macro_auc"], s_syn[name]["macro_auc"]
        tstr[name] = {"trtr_macro_auc": a, "tstr_macro_auc": b, "gap": (a - b) if a is not None and b is not None else None,
                      "tstr_auc": s_syn[name]["auc"], "trtr_auc": s_real[name]["auc"]}
    tstr["recipe"] = (f"Classifier(width={cfg.eval_width}), {cfg.eval_epochs} epochs, sqrt-balanced sampling, "
                      f"n={len(tr)} (real train) or {len(syn_tr)} synthetic with the same label rows; tested on real test")

    # The study: real-only vs real + synthetic top-up of conditions below `topup_to` images.
    # Both arms sample naturally (no re-weighting), so the synthetic top-up is the only balancing.
    counts = tr.labels.sum(0)
    add = np.maximum(cfg.topup_to - counts, 0).astype(int)
    rows = np.concatenate([np.repeat(np.eye(len(conds), dtype=np.uint8)[k][None], n, 0) for k, n in enumerate(add) if n > 0]) \
        if add.sum() else np.zeros((0, len(conds)), np.uint8)
    console.print(f"evaluate: augmentation experiment (+{len(rows)} synthetic images)")
    syn_aug = gen(rows, seed + 500) if len(rows) else np.zeros((0, 128, 128), np.uint8)
    m_ro, _ = fit(tr.images, tr.labels, balance="none", desc="real-only", **common)
    m_rs, _ = fit(np.concatenate([tr.images, syn_aug]), np.concatenate([tr.labels, rows]), balance="none",
                  desc="real+synthetic", **common)
    s_ro, s_rs = scores(m_ro), scores(m_rs)
    aug = {"synthetic_added": {c: int(n) for c, n in zip(conds, add) if n > 0}, "rare_conditions": RARE_CONDITIONS,
           "threshold": 0.5,
           "recipe": f"Classifier(width={cfg.eval_width}), {cfg.eval_epochs} epochs, natural sampling in both arms; "
                     f"synthetic one-hot images top each condition up to {cfg.topup_to} train images"}
    for name in ("all_sources", "nih_only"):
        ro, rs = s_ro[name], s_rs[name]
        rare = [c for c in RARE_CONDITIONS if ro["recall_at_0.5"].get(c) is not None]
        aug[name] = {
            "real_only": ro, "real_plus_synthetic": rs,
            "rare_recall_real_only": macro([ro["recall_at_0.5"][c] for c in rare]),
            "rare_recall_real_plus_synthetic": macro([rs["recall_at_0.5"][c] for c in rare]),
            "rare_auc_real_only": macro([ro["auc"][c] for c in rare]),
            "rare_auc_real_plus_synthetic": macro([rs["auc"][c] for c in rare]),
        }
    return {"tstr": tstr, "augmentation": aug}


def _goals(m: dict) -> dict:
    """The issue's targets, checked (reported, never tuned to)."""
    g = {}
    fd = m["frechet"]["all_sources"]
    g["fd_le_2x_floor"] = {"value": fd["ratio"], "target": 2.0, "met": fd["ratio"] is not None and fd["ratio"] <= 2.0}
    ratios = {c: v["ratio"] for c, v in m["fidelity"]["all_sources"].items() if v["ratio"] is not None}
    g["fidelity_ge_0.9"] = {"worst": min(ratios.values()) if ratios else None,
                            "below": sorted(c for c, r in ratios.items() if r < 0.9),
                            "met": bool(ratios) and all(r >= 0.9 for r in ratios.values())}
    if "tstr" in m:
        gap = m["tstr"]["all_sources"]["gap"]
        g["tstr_gap_le_0.07"] = {"value": gap, "met": gap is not None and gap <= 0.07}
        a = m["augmentation"]["all_sources"]
        g["rare_recall_improved"] = {"real_only": a["rare_recall_real_only"],
                                     "real_plus_synthetic": a["rare_recall_real_plus_synthetic"],
                                     "met": (a["rare_recall_real_plus_synthetic"] or 0) > (a["rare_recall_real_only"] or 0)}
    return g


def print_report(m: dict, console) -> None:
    from rich.table import Table

    fd = m["frechet"]
    t = Table(title=f"Fréchet distance ({m['extractor']}; test split)")
    for col in ("set", "FD", "floor", "ratio", "n syn", "n ref"):
        t.add_column(col, justify="right" if col != "set" else "left")
    rows = [("all sources", fd["all_sources"]), ("NIH only", fd["nih_only"])]
    rows += [(c, v) for c, v in fd["per_condition"].items()]
    for name, v in rows:
        t.add_row(name, f"{v['fd']:.3f}", f"{v['floor']:.3f}", f"{v['ratio']:.2f}" if v["ratio"] else "-",
                  str(v["n_synthetic"]), str(v["n_reference"]))
    console.print(t)
    p = m["precision_recall_coverage"]
    t = Table(title="precision / recall / coverage (vs real test)")
    for col in ("set", "precision", "recall", "coverage"):
        t.add_column(col)
    for src in ("all_sources", "nih_only"):
        for k, v in p[src].items():
            t.add_row(f"{src}: {k}", f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['coverage']:.3f}")
    console.print(t)
    t = Table(title="per-condition fidelity: classifier AUC synthetic / real")
    for col in ("condition", "AUC real", "AUC syn", "ratio", "NIH ratio"):
        t.add_column(col)
    for c, v in m["fidelity"]["all_sources"].items():
        vn = m["fidelity"]["nih_only"][c]
        f = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        t.add_row(c + (" *" if c in RARE_CONDITIONS else ""), f(v["auc_real"]), f(v["auc_synthetic"]), f(v["ratio"]), f(vn["ratio"]))
    console.print(t)
    if "tstr" in m:
        for src in ("all_sources", "nih_only"):
            v = m["tstr"][src]
            console.print(f"TSTR {src}: TRTR {v['trtr_macro_auc']:.3f}  TSTR {v['tstr_macro_auc']:.3f}  gap {v['gap']:.3f}")
        for src in ("all_sources", "nih_only"):
            a = m["augmentation"][src]
            console.print(f"augmentation {src}: rare recall {a['rare_recall_real_only']:.3f} -> "
                          f"{a['rare_recall_real_plus_synthetic']:.3f}; rare AUC {a['rare_auc_real_only']:.3f} -> "
                          f"{a['rare_auc_real_plus_synthetic']:.3f}")
    console.print(f"goals: {json.dumps({k: v.get('met') for k, v in m['goals'].items()})}")
