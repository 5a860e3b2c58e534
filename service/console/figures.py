"""Model-quality figures as rows for the console's bar charts, from the metrics `xraysynth evaluate`
writes (nested per reference set) or the flat summary older cards carry. A figure a model lacks is
left out rather than drawn as zero."""

from __future__ import annotations


def _get(doc, *path):
    for p in path:
        doc = doc.get(p) if isinstance(doc, dict) else None
    return doc if isinstance(doc, (int, float)) and not isinstance(doc, bool) else None


def quality(metrics: dict | None) -> dict:
    m = metrics or {}
    prc = ("precision_recall_coverage", "all_sources")
    rates = []  # (label, synthetic value, value for real training images or None)
    for name in ("precision", "recall", "coverage"):
        synthetic = _get(m, name) if _get(m, name) is not None else _get(m, *prc, "synthetic_vs_test", name)
        if synthetic is not None:
            rates.append((name, synthetic, _get(m, *prc, "real_train_vs_test", name)))
    frechet = {}
    flat = m.get("fid_ratio_to_real_floor")
    per_condition = (m.get("frechet") or {}).get("per_condition") if isinstance(m.get("frechet"), dict) else None
    if isinstance(flat, dict):
        frechet = {c: v for c, v in flat.items() if isinstance(v, (int, float))}
    elif isinstance(per_condition, dict):
        frechet = {c: _get(v, "ratio") for c, v in per_condition.items() if _get(v, "ratio") is not None}
    tstr = [(label, v) for label, v in (("trained on real, tested on real", _get(m, "tstr", "all_sources", "trtr_macro_auc")),
                                        ("trained on synthetic, tested on real", _get(m, "tstr", "all_sources", "tstr_macro_auc")))
            if v is not None]
    overall = _get(m, "frechet", "all_sources", "ratio")
    return {"rates": [(name, v) for name, v, _ in rates],
            "real_rates": [(name, r) for name, _, r in rates if r is not None], "frechet": dict(sorted(frechet.items())), "frechet_overall": overall, "tstr": tstr}
