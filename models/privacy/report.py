"""Privacy report of a model version on its real training set (hospital zone).

    python -m models.privacy.report --bundle models/checkpoints/default/bundle.pt --trainset runs/trainset

Builds the training-set index (train split), calibrates the threshold, then measures:

* calibration rates on the real train split (same-patient catch, different-patient flag; per source);
* held-out check: real val+test images (patients the model never saw) run through the filter - the
  rate a generator that memorises nothing would be filtered at;
* the filter on ``--n-generated`` generated images (equal count per condition, one-hot, latents
  ``latent_batch(seed, i, 0)`` as the worker makes them): fraction filtered, per condition, and
  whether every rejected image was replaced within ``max_attempts``;
* membership-inference AUCs (distance and discriminator attacks).

Prints rich tables and writes JSON (figures only, never pixels) plus the index and calibration to
``--out`` (default ``runs/privacy``; runs/ is never committed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

REID_GENERATED_N = 2000  # the bundle's own images checked per check (the size reid_ship reports)
# A card says in words when its generated images sit this much closer to training patients than new
# patients' own radiographs do (the DCR control, models.privacy.dcr).
DCR_CAVEAT_POINTS = 0.02
DCR_CAVEAT_PREFIX = "Memorisation (DCR):"


def filter_generated(bundle, index, calibration, *, n: int, seed: int, max_attempts: int = 8, shard: int = 1000) -> dict:
    """Generate ``n`` images (n / C per condition, contiguous blocks as in a dataset) and run the
    filter as the worker does: flagged images are regenerated with attempt + 1, up to max_attempts.

    The loop is spelled out here (rather than calling filter_and_replace) so that one image failing
    every attempt does not hide the statistics of the rest: the report counts it as a failure.
    """
    # lazy: loaded on first use, so importing models.privacy stays torch-free
    from models.privacy.filter import memorisation_filter
    from models.privacy.own_images import balanced_conditions, balanced_generate_fn

    cond_of = balanced_conditions(n, len(bundle.conditions))
    gen = balanced_generate_fn(bundle, seed, n)
    attempts = np.zeros(n, dtype=np.int64)
    scores = np.full(n, np.nan, dtype=np.float32)
    nearest = np.full(n, -1, dtype=np.int64)
    first_try_rejected = np.zeros(n, dtype=bool)
    rejected_scores = []
    for s in range(0, n, shard):
        pending = np.arange(s, min(s + shard, n))
        for attempt in range(max_attempts):
            px, emb, _ = gen(pending, np.full(len(pending), attempt, dtype=np.int64))
            res = memorisation_filter(index, calibration, px, emb)
            ok = pending[res.keep]
            attempts[ok], scores[ok], nearest[ok] = attempt, res.score[res.keep], res.nearest_index[res.keep]
            rejected_scores.append(res.score[~res.keep])
            if attempt == 0:
                first_try_rejected[pending[~res.keep]] = True
            pending = pending[~res.keep]
            if len(pending) == 0:
                break
    failed = np.flatnonzero(np.isnan(scores))  # rejected at every attempt: would fail the dataset
    rej = np.concatenate(rejected_scores) if rejected_scores else np.zeros(0, np.float32)
    done = ~np.isnan(scores)
    per_condition = {
        c: {"n": int((cond_of == k).sum()), "fraction_filtered": float(first_try_rejected[cond_of == k].mean()),
            "failed": int(np.isin(failed, np.flatnonzero(cond_of == k)).sum())}
        for k, c in enumerate(bundle.conditions)
    }
    # How concentrated are the released images' nearest training patients (a mode-collapse hint)?
    _, counts = np.unique(index.patient_ids[nearest[done]], return_counts=True)
    return {
        "n_images": int(n),
        "seed": int(seed),
        "fraction_filtered": float(first_try_rejected.mean()),
        "n_rejected_total": int(len(rej)),
        "n_generated_total": int(n + len(rej) - len(failed)),
        "attempts_histogram": {int(a): int(c) for a, c in zip(*np.unique(attempts[done], return_counts=True))},
        "max_attempts": int(max_attempts),
        "n_failed": int(len(failed)),
        "failed_image_indices": failed[:100].tolist(),
        "released_score_quantiles": {
            str(q): float(v) for q, v in zip((0.01, 0.05, 0.5), np.quantile(scores[done], (0.01, 0.05, 0.5)))
        } if done.any() else {},
        "rejected_score_max": float(rej.max()) if len(rej) else None,
        "distinct_nearest_patients": int(len(counts)),
        "top_nearest_patient_share": float(counts.max() / counts.sum()) if len(counts) else 0.0,
        "per_condition": per_condition,
        "released_scores": scores[done],  # dropped from the JSON; used for the evidence histogram
        "rejected_scores": rej,
    }


def heldout_check(bundle, index, calibration, trainset) -> dict:
    """Real val+test images through the filter: new patients, so every flag is a false positive."""
    # lazy: loaded on first use, so importing models.privacy stays torch-free
    from models.privacy.features import classifier_embeddings
    from models.privacy.filter import memorisation_filter

    rows = np.flatnonzero(np.isin(np.asarray(trainset.splits).astype(str), ["val", "test"]))
    px = np.asarray(trainset.images)[rows]
    res = memorisation_filter(index, calibration, px, classifier_embeddings(bundle.classifier, px))
    sources = np.asarray(trainset.sources).astype(str)[rows]
    return {
        "n_images": int(len(rows)),
        "flag_rate": float((~res.keep).mean()),
        "per_source": {str(s): float((~res.keep)[sources == s].mean()) for s in np.unique(sources)},
    }


def run(args) -> dict:
    import torch

    # lazy: loaded on first use, so importing models.privacy stays torch-free
    from models.bundle import load_bundle
    from models.privacy import build_privacy_index, calibrate, evidence_payload, membership_inference
    from models.trainset import load_trainset

    torch.set_num_threads(args.threads)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle_bytes = Path(args.bundle).read_bytes()
    bundle = load_bundle(bundle_bytes, device=args.device)
    trainset = load_trainset(args.trainset)
    timings, report = {}, {}
    report["bundle"] = {"path": str(args.bundle), "sha256": hashlib.sha256(bundle_bytes).hexdigest(),
                        "card_name": bundle.card.get("name"), "config": bundle.config}
    report["trainset"] = {"path": str(args.trainset), "fingerprint": trainset.fingerprint}

    t = time.time()
    index = build_privacy_index(bundle, trainset).to(args.device)
    index.save(out_dir / "privacy_index.npz")
    timings["index"] = time.time() - t
    t = time.time()
    cal = calibrate(index, trainset)
    (out_dir / "calibration.json").write_text(json.dumps(cal.to_dict(), indent=2))
    timings["calibrate"] = time.time() - t
    report["calibration"] = {k: v for k, v in cal.to_dict().items() if not k.endswith("_counts") and k != "bin_edges"}

    t = time.time()
    report["heldout"] = heldout_check(bundle, index, cal, trainset)
    timings["heldout"] = time.time() - t

    t = time.time()
    gen = filter_generated(bundle, index, cal, n=args.n_generated, seed=args.seed, max_attempts=args.max_attempts)
    evidence = evidence_payload(cal, gen.pop("released_scores"), rejected_scores=gen.pop("rejected_scores"))
    report["generated"] = gen
    report["evidence_histogram"] = evidence
    timings["generate_filter"] = time.time() - t
    if index.reid is not None:
        # lazy: loaded on first use, so importing models.privacy stays torch-free
        from models.privacy.own_images import generated_check

        t = time.time()
        # per check, at the first attempt, as reid_ship measures when it ships the verifier
        report["reidentification_on_generated"] = generated_check(
            bundle, index, cal, min(args.n_generated, REID_GENERATED_N), seed=args.seed, trainset=trainset)
        timings["reidentification_on_generated"] = time.time() - t

    t = time.time()
    report["membership_inference"] = membership_inference(
        bundle, trainset, n=args.mia_n, n_generated=args.mia_generated, seed=args.seed, index=index
    )
    timings["membership_inference"] = time.time() - t
    report["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    report["device"] = args.device

    path = Path(args.json) if args.json else out_dir / f"privacy_report-{report['bundle']['sha256'][:12]}.json"
    path.write_text(json.dumps(report, indent=2))
    report["json_path"] = str(path)
    return report


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    if not con.is_terminal:  # piped to a file: don't squeeze the tables into 80 columns
        con = Console(width=120)
    cal = report["calibration"]
    t = Table(title=f"Memorisation threshold, calibrated on the real train split (threshold {cal['threshold']:.3f})")
    for col in ("group", "same-patient caught", "different-patient flagged", "n images"):
        t.add_column(col, justify="right" if col != "group" else "left")
    t.add_row("all (nearest neighbour)", f"{cal['same_patient_catch_rate']:.1%}", f"{cal['different_patient_flag_rate']:.2%}",
              f"{cal['n_same_patient_images']} / {cal['n_different_patient_images']}")
    p = cal["pairs"]
    t.add_row("all (pairs)", f"{p['same_patient_pair_catch_rate']:.1%}", f"{p['different_patient_pair_flag_rate']:.3%}",
              f"{p['n_same_patient_pairs']} / {p['n_random_different_patient_pairs']} pairs")
    for src, r in cal["per_source"].items():
        t.add_row(f"  {src}", f"{r['same_patient_catch_rate']:.1%}", f"{r['different_patient_flag_rate']:.2%}",
                  f"{r['n_same_patient_images']} / {r['n_images']}")
    h = report["heldout"]
    t.add_row("held-out real (val+test) flagged", "", f"{h['flag_rate']:.2%}", str(h["n_images"]))
    con.print(t)
    con.print(f"targets met: {cal['targets_met']}  rule: {cal['rule']}")
    cc = cal["copy_check"]
    con.print("perturbed copies flagged: " + ", ".join(
        f"{k} {v['flagged_rate']:.0%} (max score {v['max_score']:.3f})" for k, v in cc.items() if isinstance(v, dict)))

    g = report["generated"]
    t = Table(title=f"Filter on {g['n_images']} generated images")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("filtered at first attempt", f"{g['fraction_filtered']:.2%}")
    t.add_row("regenerations in total", str(g["n_rejected_total"]))
    t.add_row("attempts used", json.dumps(g["attempts_histogram"]))
    t.add_row(f"images rejected at all {g['max_attempts']} attempts", str(g["n_failed"]))
    t.add_row("released score 1% / 5% / 50%", " / ".join(f"{v:.3f}" for v in g["released_score_quantiles"].values()))
    t.add_row("distinct nearest training patients", str(g["distinct_nearest_patients"]))
    worst = sorted(g["per_condition"].items(), key=lambda kv: -kv[1]["fraction_filtered"])[:5]
    t.add_row("most filtered conditions", ", ".join(f"{c} {v['fraction_filtered']:.1%}" for c, v in worst))
    con.print(t)

    m = report["membership_inference"]
    t = Table(title=f"Membership inference ({m['n_members']} members vs {m['n_nonmembers']} matched non-members)")
    for col in ("attack", "AUC", "± s.e.", f"max(AUC,1-AUC) <= {m['target']}"):
        t.add_column(col, justify="right" if col != "attack" else "left")
    for a in m["attacks"].values():
        if "auc" in a:
            t.add_row(a["attack"], f"{a['auc']:.3f}", f"{a['auc_se']:.3f}", "yes" if a["target_met"] else "NO")
        else:
            t.add_row(a["attack"], "-", "-", a["skipped"])
    con.print(t)
    con.print(f"JSON: {report['json_path']}   timings (s): {report['timings_s']}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, help="bundle.pt of the model version")
    ap.add_argument("--trainset", required=True, help="training set folder (written by ingest)")
    ap.add_argument("--out", default="runs/privacy", help="folder for the index, calibration and report")
    ap.add_argument("--json", default=None, help="report JSON path (default: OUT/privacy_report-<sha>.json)")
    ap.add_argument("--n-generated", type=int, default=10_000)
    ap.add_argument("--max-attempts", type=int, default=8)
    ap.add_argument("--mia-n", type=int, default=1000, help="members (and as many non-members)")
    ap.add_argument("--mia-generated", type=int, default=5000, help="generated samples for the distance attack")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write-card", action="store_true",
                    help="also store the figures (aggregates only) in the bundle's card, section 'privacy'")
    args = ap.parse_args(argv)
    report = run(args)
    print_report(report)
    if args.write_card:
        write_card_section(args.bundle, report)


def card_section(report: dict) -> dict:
    """The report's aggregates for the model card: rates, counts and AUCs, no per-image lists."""
    gen = {k: v for k, v in report["generated"].items() if k != "failed_image_indices"}
    return {"calibration": report["calibration"], "heldout_real_images": report["heldout"],
            "filter_on_generated": gen, "membership_inference": report["membership_inference"],
            "report_sha256_of_bundle": report["bundle"]["sha256"], "device": report["device"]}


def write_card_section(bundle_path, report: dict) -> None:
    """The card's privacy section from this report. The verifier's own figures (measured on real
    patients only, by reid_ship) are kept; its check of the generator's images is this report's."""
    # lazy: loaded on first use, so importing models.privacy stays torch-free
    from models.bundle import load_bundle
    from models.registry import write_bundle

    b = load_bundle(bundle_path)
    privacy = card_section(report)
    reid = (b.card.get("privacy") or {}).get("reidentification")
    if reid:
        gen = report.get("reidentification_on_generated")
        if gen is not None:
            met = {**reid.get("targets_met", {}),
                   "generated_flagged": gen["flagged_either"] <= reid.get("targets", {}).get("generated_flagged", 0.02)}
            reid = {**reid, "filter_on_generated": gen, "targets_met": met}
        privacy["reidentification"] = reid
    control = ((privacy.get("reidentification") or {}).get("filter_on_generated") or {}).get("dcr_control")
    caveats = [c for c in b.card.get("caveats", []) if not c.startswith(DCR_CAVEAT_PREFIX)]
    if control and control["difference"] > DCR_CAVEAT_POINTS:
        caveats.append(
            f"{DCR_CAVEAT_PREFIX} {control['synthetic']:.1%} of this model's images sit closer to a training patient "
            f"than to a new one, against {control['real_new_patients']:.1%} of new patients' own radiographs "
            f"({100 * control['difference']:+.1f} ± {100 * (control['difference_sd'] or 0):.1f} points over "
            f"{control['repeats']} halvings of the held-out set, verifier space): the generator is pulled toward its "
            "training patients. The filter replaces the images within its thresholds; it does not undo that shift.")
    b.card = {**b.card, "privacy": privacy, "caveats": caveats}
    write_bundle(bundle_path, b)


if __name__ == "__main__":
    main()
