"""Markdown tables of a model card's figures, for the READMEs that quote them.

    python -m models.card_tables models/checkpoints/default/card.json [--before OLD_CARD.json]

Prints the headline table (with the previous card's values beside when ``--before`` is given), the
heatmap table and the seed experiment's tables, all read from the card, so a README that quotes the
shipped default is pasted from its card rather than copied by hand. Reads JSON only (no torch).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _pct(x, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f} %"


def _f(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ms(m: dict | None) -> str:
    if not m or m.get("mean") is None:
        return "-"
    return f"{m['mean']:.3f} ± {m['sd']:.3f}" if m.get("sd") is not None else f"{m['mean']:.3f}"


def _dcr_control(c: dict | None) -> str:
    if not c:
        return "-"
    return (f"{_pct(c['synthetic'])} vs {_pct(c['real_new_patients'])} ({100 * c['difference']:+.1f} ± "
            f"{100 * (c['difference_sd'] or 0):.1f} points, {c['repeats']} repeats)")


def headline(card: dict) -> dict[str, str]:
    """The figures the default's README leads with, as text, keyed by what they measure."""
    m, p = card.get("metrics") or {}, card.get("privacy") or {}
    fd = (m.get("frechet") or {}).get("all_sources") or {}
    prc = (m.get("precision_recall_coverage") or {}).get("all_sources") or {}
    syn, real = prc.get("synthetic_vs_test") or {}, prc.get("real_train_vs_test") or {}
    ratios = [v["ratio"] for v in ((m.get("fidelity") or {}).get("all_sources") or {}).values() if v.get("ratio")]
    tstr = (m.get("tstr") or {}).get("all_sources") or {}
    gen = p.get("filter_on_generated") or {}
    reid_gen = (p.get("reidentification") or {}).get("filter_on_generated") or {}
    mia = ((p.get("membership_inference") or {}).get("attacks")) or {}
    hm = card.get("heatmaps") or {}
    n_cond = len(hm.get("conditions") or {})
    return {
        "training steps (batch)": f"{(card.get('training') or {}).get('steps')} ({(card.get('training') or {}).get('batch_size')})",
        "Fréchet distance / real-vs-real floor (test)": f"{_f(fd.get('fd'), 2)} / {_f(fd.get('floor'))} ({_f(fd.get('ratio'), 1)}×)",
        "per-condition FD ratio range": " – ".join(f"{r:.1f}×" for r in (m.get("frechet") or {}).get("per_condition_ratio_range") or []),
        "k-NN precision / recall / coverage": f"{_f(syn.get('precision'))} / {_f(syn.get('recall'))} / {_f(syn.get('coverage'))}",
        "real vs real precision / recall / coverage": f"{_f(real.get('precision'))} / {_f(real.get('recall'))} / {_f(real.get('coverage'))}",
        "condition fidelity (AUC synthetic ÷ real), worst": _f(min(ratios), 2) if ratios else "-",
        "TSTR gap (macro AUC)": _f(tstr.get("gap")),
        "generated images filtered (first attempt)": f"{_pct(gen.get('fraction_filtered'), 2)} of {gen.get('n_images')}",
        "own images flagged copy / re-identification; DCR share": (
            f"{_pct(reid_gen.get('flagged_copy'), 2)} / {_pct(reid_gen.get('flagged_reidentification'), 2)} of "
            f"{reid_gen.get('n_images')}; {_pct((reid_gen.get('dcr') or {}).get('share_closer_to_training'))}"),
        "DCR share beside new patients' own (difference ± sd over repeats)": _dcr_control(reid_gen.get("dcr_control")),
        "membership-inference AUC (distance / discriminator)": " / ".join(
            _f((mia.get(k) or {}).get("auc")) for k in ("distance", "discriminator")),
        "informative heatmap conditions": f"{n_cond - len(hm.get('uninformative_conditions') or [])} of {n_cond}",
    }


def headline_table(card: dict, before: dict | None = None) -> str:
    now = headline(card)
    if before is None:
        rows = ["| measure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in now.items()]
    else:
        old = headline(before)
        rows = ["| measure | before | now |", "|---|---|---|"] + [f"| {k} | {old[k]} | {v} |" for k, v in now.items()]
    return "\n".join(rows)


def _order(card: dict, condition: str) -> int:
    """The model's condition order (card.json sorts its keys)."""
    conds = list(card.get("conditions") or [])
    return conds.index(condition) if condition in conds else len(conds)


def heatmap_table(card: dict) -> str:
    rows = ["| condition | synthetic: empty | synthetic: margin ± se (n) | real test: empty | real test: margin ± se (n) | informative |",
            "|---|---|---|---|---|---|"]
    per = (card.get("heatmaps") or {}).get("conditions") or {}
    for c, v in sorted(per.items(), key=lambda kv: _order(card, kv[0])):
        cells = []
        for side in (v.get("synthetic") or {}, v.get("real") or {}):
            cells.append(f"{side['empty_share']:.0%} of {side['n']}" if side.get("n") else "-")
            cells.append(f"{side['margin']:+.3f} ± {side['margin_se']:.3f} ({side['n_tested']})"
                         if side.get("margin") is not None else "—")
        rows.append(f"| {c} | {' | '.join(cells)} | {'yes' if v['informative'] else 'no'} |")
    return "\n".join(rows)


def seed_experiment_tables(card: dict) -> str:
    out = []
    for key, e in (card.get("augmentation_experiment") or {}).items():
        s = e["summary"]
        real, both = s["real"], s["real+synthetic"]
        out.append(f"{key}: seeds {e['seeds']}, real train images {e['n_train_real']}, synthetic {e['n_synthetic']} "
                   f"(top-up to {e['target_per_class']} a class), classifier width {e['width']}, {e['epochs']} epochs, "
                   f"val {e['n_val']} / test {e['n_test']} images; `{e['command']}`\n")
        out.append("| class (train n, test positives) | balanced acc. real | balanced acc. real+syn | AUC real | "
                   "AUC real+syn | sensitivity real | sensitivity real+syn |")
        out.append("|---|---|---|---|---|---|---|")
        rare = set(real.get("rare_classes") or [])
        for c in e["classes"]:
            a, b = real["per_class"][c], both["per_class"][c]
            out.append(f"| {c}{' *' if c in rare else ''} ({e['train_counts'][c]}, {e['test_positives'][c]}) | "
                       f"{_ms(a['balanced_accuracy'])} | {_ms(b['balanced_accuracy'])} | {_ms(a['auc'])} | {_ms(b['auc'])} | "
                       f"{_ms(a['sensitivity'])} | {_ms(b['sensitivity'])} |")
        for name, k in (("macro balanced accuracy", "macro_balanced_accuracy"), ("macro AUC", "macro_auc"),
                        ("rare-class balanced accuracy", "rare_balanced_accuracy"), ("rare-class AUC", "rare_auc")):
            out.append(f"| **{name}** | {_ms(real[k])} | {_ms(both[k])} | | | | |")
        gain = s.get("rare_balanced_accuracy_gain")
        out.append(f"\nRare classes (*): {', '.join(sorted(rare)) or 'none'}; rare balanced-accuracy gain "
                   f"(real+synthetic − real, per seed): {_ms(gain)} over {len(e['seeds'])} seeds.\n")
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("card", help="card.json (or a bundle's card written as JSON)")
    p.add_argument("--before", help="an earlier card.json to print beside the headline figures")
    a = p.parse_args(argv)
    card = json.loads(Path(a.card).read_text())
    before = json.loads(Path(a.before).read_text()) if a.before else None
    print(headline_table(card, before), heatmap_table(card), seed_experiment_tables(card), sep="\n\n")


if __name__ == "__main__":
    main()
