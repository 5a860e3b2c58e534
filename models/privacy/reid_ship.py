"""Fit, judge and ship a model version's re-identification verifier (hospital zone).

    python -m models.privacy.reid_ship --bundle models/checkpoints/default/bundle.pt --trainset runs/trainset

1. fits the learnt verifiers (linear, ``reid.fit_linear``; CNN, ``reid_train.fit_cnn``, or saved
   fits via ``--cnn-weights``) on the train split with three seeds each and evaluates each on
   val + test patients (``reid_eval``), beside the registered-correlation baseline;
2. ships the best by source-matched pair AUC (the seed-0 fit of a learnt family);
3. builds the privacy index and calibration with it (the copy threshold is unchanged: it does not
   depend on the verifier) and runs the filter on ``--n-generated`` of the bundle's own images at
   their first attempt: flags per check and the DCR share;
4. writes the verifier into the bundle and the figures into its card (``privacy.reidentification``,
   plus a plain-words caveat), and card.json beside it. JSON with all figures goes to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

SEEDS = (0, 1, 2)


def _summary(ev: dict) -> dict:
    p, loo = ev["pairs"], ev["leave_one_out"]
    return {"source_matched_auc": p["source_matched"]["auc"], "source_matched_tpr_at_1pct_fpr": p["source_matched"]["tpr_at_1pct_fpr"],
            "random_negatives_auc": p["random"]["auc"], "random_negatives_tpr_at_1pct_fpr": p["random"]["tpr_at_1pct_fpr"],
            "loo_catch_rate_crossfit": loo["crossfit"]["catch_rate"], "loo_catch_rate_shipped_threshold": loo["at_shipped_threshold"]["catch_rate"],
            "loo_rank1": loo["rank1"], "heldout_threshold": ev["calibration"]["threshold"]}


def _agreement(flags: list[np.ndarray]) -> dict:
    """How much the seeds' held-out flag sets agree (Jaccard of flagged images, pairwise)."""
    out = {}
    for i in range(len(flags)):
        for j in range(i + 1, len(flags)):
            a, b = flags[i], flags[j]
            union = int((a | b).sum())
            out[f"{i}-{j}"] = {"jaccard": float((a & b).sum() / union) if union else 1.0, "n_flagged": [int(a.sum()), int(b.sum())]}
    return out


def caveat(section: dict) -> str:
    s = section["verifier_heldout"]
    catch = s["loo_catch_rate_crossfit"]
    strength = "well" if s["source_matched_auc"] >= 0.90 else "only partly"
    return (
        f"Re-identification check: the shipped verifier ({section['shipped']}) separates two images of one new patient from "
        f"a same-source stranger {strength} (pair AUC {s['source_matched_auc']:.2f}, {s['source_matched_tpr_at_1pct_fpr']:.0%} "
        f"caught at 1% false positives) and at the threshold that flags 1% of new patients' images it catches "
        f"{catch:.1%} of held-out patients' other images. So the filter removes copies and near-copies, but does NOT "
        "reliably protect against a generated image that shows a training patient's anatomy in a new pose, exposure or "
        f"disease state: about {1 - catch:.1%} of such images would be released."
    )


def _fit_cnn(args, ts, tr, seed: int, out: Path):
    """A saved CNN fit (``--cnn-weights`` pattern) or a fresh one, saved beside the report."""
    # lazy: loaded on first use, so importing models.privacy stays torch-free
    from models.privacy.reid_train import fit_cnn, load_space, save_space

    path = Path(args.cnn_weights.format(seed=seed)) if args.cnn_weights else None
    if path is not None and path.exists():
        return load_space(path)
    init = None
    if args.cnn_arch == "classifier":
        # lazy: as above
        from models.bundle import load_bundle

        init = load_bundle(args.bundle).classifier.body.state_dict()
    epochs = args.cnn_epochs if seed == SEEDS[0] else (args.cnn_short_epochs or args.cnn_epochs)
    space = fit_cnn(ts.images[tr], ts.patient_ids[tr], ts.sources[tr], seed=seed, arch=args.cnn_arch, epochs=epochs,
                    lr=args.cnn_lr, init_body=init)
    save_space(space, path or out / f"cnn_seed{seed}.pt")
    return load_space(path or out / f"cnn_seed{seed}.pt")  # judged as shipped: fp16 weights


def _family(name: str, fits: dict, evals: dict, flags: list) -> dict:
    spread = {k: [float(_summary(evals[f"{name}_seed{s}"])[k]) for s in fits] for k in _summary(evals[f"{name}_seed0"])}
    return {"seed0": _summary(evals[f"{name}_seed0"]), "seeds": list(fits),
            "seed_spread": {k: {"min": min(v), "max": max(v), "values": v} for k, v in spread.items()},
            "seed_flag_agreement": _agreement(flags),
            "fit_seed0": getattr(fits[SEEDS[0]], "info", {})}


def run(args) -> dict:
    import torch

    # lazy: loaded on first use, so importing models.privacy stays torch-free
    from models.bundle import load_bundle
    from models.privacy import build_privacy_index, calibrate
    from models.privacy.reid import NCCSpace, bundle_verifier, fit_linear
    from models.privacy.reid_eval import evaluate_space
    from models.registry import write_bundle
    from models.trainset import load_trainset

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ts = load_trainset(args.trainset)
    tr = np.asarray(ts.splits).astype(str) == "train"
    timings, evals = {}, {}
    fits, flags = {"linear": {}, "cnn": {}}, {"linear": [], "cnn": []}
    cmd = f"python -m models.privacy.reid_ship --bundle {args.bundle} --trainset {args.trainset}" + (
        f" --cnn-weights '{args.cnn_weights}'" if args.cnn_weights else "") + (" --write-bundle" if args.write_bundle else "")
    families = ["linear"] + (["cnn"] if not args.no_cnn else [])
    for fam in families:
        for seed in SEEDS:
            t = time.time()
            fits[fam][seed] = fit_linear(ts.images[tr], ts.patient_ids[tr], seed=seed) if fam == "linear" \
                else _fit_cnn(args, ts, tr, seed, out)
            ev = evaluate_space(fits[fam][seed], ts)
            flags[fam].append(ev.pop("flags_heldout"))
            evals[f"{fam}_seed{seed}"] = ev
            timings[f"{fam}_seed{seed}"] = round(time.time() - t, 1)
            print(f"{fam} verifier seed {seed}: {json.dumps(_summary(ev))}", flush=True)
    if args.baseline_json and Path(args.baseline_json).exists():
        evals["ncc"] = json.loads(Path(args.baseline_json).read_text())
    else:
        t = time.time()
        evals["ncc"] = evaluate_space(NCCSpace(), ts)
        evals["ncc"].pop("flags_heldout")
        timings["ncc"] = round(time.time() - t, 1)
        (out / "eval_ncc.json").write_text(json.dumps(evals["ncc"], indent=2, default=float))
    print(f"registered NCC baseline: {json.dumps(_summary(evals['ncc']))}", flush=True)
    base = _summary(evals["ncc"])
    cands = {"ncc": base, **{f: _summary(evals[f"{f}_seed0"]) for f in families}}
    best = max(cands, key=lambda k: cands[k]["source_matched_auc"])
    space = NCCSpace() if best == "ncc" else fits[best][SEEDS[0]]
    best_eval = evals["ncc" if best == "ncc" else f"{best}_seed0"]

    bundle = load_bundle(args.bundle)
    bundle.verifier = bundle_verifier(space)
    if args.n_generated > 0:
        t = time.time()
        index = build_privacy_index(bundle, ts)
        cal = calibrate(index, ts)
        reid_cal = {k: v for k, v in cal.reidentification.items() if not k.endswith("_counts") and k != "bin_edges"}
        copy_threshold = float(cal.threshold)
        timings["index_and_calibration"] = round(time.time() - t, 1)
        t = time.time()
        # lazy: as above
        from models.privacy.own_images import generated_check

        gen = generated_check(bundle, index, cal, args.n_generated, seed=args.seed, trainset=ts)
        timings["generated"] = round(time.time() - t, 1)
        (out / "privacy_index.npz").write_bytes(index.to_bytes())
    else:  # the evaluation's calibration is the same rule on the same images; registration recomputes it
        c = best_eval["calibration"]
        reid_cal = {"threshold": c["threshold"], "new_patient_flag_rate": c["flag_rate"],
                    "n_new_patient_images": c["n_heldout_images"], "basis": "held-out images (val + test patients) "
                    "against the training index", "crossfit_flag_rate": c["crossfit_flag_rate"]}
        copy_threshold = ((bundle.card.get("privacy") or {}).get("calibration") or {}).get("threshold")
        gen = {"not_measured": "generated images were not run through the filter in this run (--n-generated 0)"}
    section = {
        "shipped": space.name, "kind": space.kind, "command": cmd,
        "why": f"highest source-matched pair AUC on held-out patients of the candidates ({', '.join(cands)}; seed 0 of each learnt one)",
        "verifier_heldout": cands[best],
        "baseline_registered_ncc": base,
        "candidates": {f: _family(f, fits[f], evals, flags[f]) for f in families},
        "sample_sizes": {"heldout_images": evals["ncc"]["calibration"]["n_heldout_images"],
                         "positive_pairs": evals["ncc"]["pairs"]["n_positive_pairs"],
                         "positive_patients": evals["ncc"]["pairs"]["n_positive_patients"],
                         "source_matched_negative_pairs": evals["ncc"]["pairs"]["source_matched"]["n_negative_pairs"],
                         "loo_query_images": evals["ncc"]["leave_one_out"]["n_query_images"],
                         "loo_patients": evals["ncc"]["leave_one_out"]["n_patients"]},
        "fit": getattr(space, "info", {}),
        "calibration": reid_cal,
        "copy_threshold_unchanged": copy_threshold,
        "filter_on_generated": gen,
        "targets": {"source_matched_auc": 0.90, "tpr_at_1pct_fpr": 0.30, "loo_catch_rate": 0.50, "generated_flagged": 0.02},
    }
    section["targets_met"] = {
        "source_matched_auc": section["verifier_heldout"]["source_matched_auc"] >= 0.90,
        "tpr_at_1pct_fpr": section["verifier_heldout"]["source_matched_tpr_at_1pct_fpr"] >= 0.30,
        "loo_catch_rate": section["verifier_heldout"]["loo_catch_rate_crossfit"] >= 0.50,
        "generated_flagged": gen["flagged_either"] <= 0.02 if "flagged_either" in gen else None,
    }
    section["does_not_protect_against"] = caveat(section)
    report = {"reidentification": section, "evaluations": evals, "timings_s": timings}
    (out / "reid_report.json").write_text(json.dumps(report, indent=2, default=float))
    if args.write_bundle:
        card = dict(bundle.card)
        card["privacy"] = {**dict(card.get("privacy") or {}), "reidentification": section}
        card["caveats"] = [c for c in card.get("caveats", []) if not c.startswith("Re-identification check:")] + [section["does_not_protect_against"]]
        bundle.card = card
        write_bundle(args.bundle, bundle)
    return report


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--trainset", required=True)
    ap.add_argument("--out", default="runs/reid")
    ap.add_argument("--baseline-json", default=None, help="reuse a saved baseline evaluation (reid_eval JSON)")
    ap.add_argument("--n-generated", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cnn-weights", default=None, help="saved CNN fits to reuse, e.g. runs/reid/cnn_seed{seed}.pt (missing ones are trained)")
    ap.add_argument("--cnn-arch", default="classifier", choices=["small", "classifier"])
    ap.add_argument("--cnn-epochs", type=int, default=14)
    ap.add_argument("--cnn-short-epochs", type=int, default=None, help="epochs for seeds 1 and 2 (default: --cnn-epochs)")
    ap.add_argument("--cnn-lr", type=float, default=1e-3)
    ap.add_argument("--no-cnn", action="store_true", help="judge only the linear verifier and the baseline")
    ap.add_argument("--write-bundle", action="store_true", help="store the verifier and the figures in the bundle")
    args = ap.parse_args(argv)
    r = run(args)["reidentification"]
    print(json.dumps({k: r[k] for k in ("shipped", "verifier_heldout", "calibration", "filter_on_generated", "targets_met")}, indent=2, default=float))
    print(r["does_not_protect_against"])


if __name__ == "__main__":
    main()
