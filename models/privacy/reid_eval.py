"""How well a space (``reid.NCCSpace`` or a trained verifier) tells patients apart, measured only on
patients nobody trained on (val + test), in ways that cannot flatter it.

* **pairs**: every same-patient pair of held-out images against (a) negatives matched on source,
  view and exact label set (falling back to source + view, then source), 5 per positive, and (b)
  random different-patient pairs, as many. The four sources look so different that random
  negatives alone make any space look excellent, so (a) is the headline and (b) only stands beside.
* **calibration**: each held-out image's distance to its nearest *training* image: a new patient,
  so a flag is a false positive. Threshold = largest distance flagging <= 1 % of them.
* **leave-one-out**: each image of a held-out patient with >= 2 images is queried against an index
  of the training set plus every other held-out image (its patient's other images included):
  *catch* = its patient's nearest other image is under the threshold (the filter would have flagged
  a generated copy of that identity), *rank-1* = the nearest image of all is its own patient's.
  Reported at the threshold calibrated on all held-out images (the shipped rule) and cross-fitted
  (val queries at the test-calibrated threshold and vice versa), which is the honest figure.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from models.metrics import two_sample_auc as roc_auc

CHUNK = 512
FLAG_RATE = 0.01
NEG_PER_POS = 5


def nearest(q: np.ndarray, x: np.ndarray, *, q_codes=None, x_codes=None, q_ids=None, x_ids=None,
            mode: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """q [S,Q,D] query variants, x [N,D] index -> (distance [Q], row [Q]); distance = min over
    variants and rows of ||q_s - x|| for unit vectors. mode "all": every row but the query's own
    image (q_ids == x_ids); "different": rows of another patient; "same": the query's patient's
    other images. No allowed row -> inf, -1."""
    qt, xt = torch.from_numpy(np.ascontiguousarray(q)), torch.from_numpy(np.ascontiguousarray(x))
    qc = None if q_codes is None else torch.as_tensor(np.asarray(q_codes))
    xc = None if x_codes is None else torch.as_tensor(np.asarray(x_codes))
    qi = None if q_ids is None else torch.as_tensor(np.asarray(q_ids))
    xi = None if x_ids is None else torch.as_tensor(np.asarray(x_ids))
    best, arg = [], []
    with torch.inference_mode():
        for s in range(0, qt.shape[1], CHUNK):
            e = min(s + CHUNK, qt.shape[1])
            sim = torch.einsum("sqd,nd->qn", qt[:, s:e], xt) if qt.shape[0] == 1 else \
                torch.stack([qt[k, s:e] @ xt.T for k in range(qt.shape[0])]).max(0).values
            bad = torch.zeros_like(sim, dtype=torch.bool)
            if qi is not None:
                bad |= qi[s:e, None] == xi[None, :]
            if mode == "different":
                bad |= qc[s:e, None] == xc[None, :]
            elif mode == "same":
                bad |= qc[s:e, None] != xc[None, :]
            sim = sim.masked_fill(bad, -float("inf"))
            v, i = sim.max(1)
            best.append(v)
            arg.append(torch.where(torch.isfinite(v), i, torch.full_like(i, -1)))
    v = torch.cat(best) if best else torch.zeros(0)
    d = torch.sqrt((2 - 2 * v).clamp(min=0)).numpy().astype(np.float32)
    d[~np.isfinite(v.numpy())] = np.inf
    return d, (torch.cat(arg).numpy() if arg else np.zeros(0, np.int64))


def pair_distance(q: np.ndarray, x: np.ndarray, a, b) -> np.ndarray:
    """Distance of explicit pairs: query variants of row a[k] against index row b[k]."""
    sim = np.einsum("spd,pd->sp", q[:, a], x[b]).max(0)
    return np.sqrt(np.clip(2 - 2 * sim, 0, None)).astype(np.float32)


def threshold_for_flag_rate(d: np.ndarray, rate: float = FLAG_RATE) -> float:
    """Largest t with mean(d < t) <= rate (the k-th smallest distance, k = floor(rate n))."""
    s = np.sort(d[np.isfinite(d)])
    return float(s[min(int(np.floor(rate * len(s))), len(s) - 1)])


def tpr_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: float = 0.01) -> float:
    """Share of same-patient distances under the distance that flags ``fpr`` of the negatives."""
    return float(np.mean(pos < threshold_for_flag_rate(neg, fpr)))


def _codes(values) -> np.ndarray:
    return np.unique(np.asarray(values).astype(str), return_inverse=True)[1].astype(np.int64)


def _same_patient_pairs(codes: np.ndarray):
    a, b = [], []
    for c in np.unique(codes):
        m = np.flatnonzero(codes == c)
        if len(m) > 1:
            i, j = np.triu_indices(len(m), 1)
            a.append(m[i])
            b.append(m[j])
    return (np.concatenate(a), np.concatenate(b)) if a else (np.zeros(0, int), np.zeros(0, int))


def matched_negatives(a, codes, keys: list[np.ndarray], rng, per_pos: int = NEG_PER_POS):
    """For each query row a[k]: ``per_pos`` rows of other patients sharing the finest matching key
    (keys from finest to coarsest). Returns (query rows, negative rows, level used per pair)."""
    qa, nb, lvl = [], [], []
    for r in a:
        for level, key in enumerate(keys):
            cand = np.flatnonzero((key == key[r]) & (codes != codes[r]))
            if len(cand):
                qa += [r] * per_pos
                nb += list(rng.choice(cand, per_pos, replace=len(cand) < per_pos))
                lvl += [level] * per_pos
                break
    return np.asarray(qa, int), np.asarray(nb, int), np.asarray(lvl, int)


def _loo(dq_same, dq_other, thr) -> dict:
    return {"catch_rate": float(np.mean(dq_same < thr)),
            "caught_and_rank1": float(np.mean((dq_same < thr) & (dq_same < dq_other)))}


def evaluate_space(space, trainset, *, seed: int = 0, query_batch: int = 512) -> dict:
    """All figures of the module doc for one space; ``trainset`` holds train, val and test rows."""
    rng = np.random.default_rng(seed)
    splits = np.asarray(trainset.splits).astype(str)
    tr, ho = np.flatnonzero(splits == "train"), np.flatnonzero(np.isin(splits, ["val", "test"]))
    imgs = np.asarray(trainset.images)
    pid = np.asarray(trainset.patient_ids).astype(str)
    codes_ho = _codes(pid[ho])
    x_tr, x_ho = space.index(imgs[tr]), space.index(imgs[ho])
    if getattr(space, "kind", "") in ("linear", "cnn"):  # one query variant, the index vector: don't embed twice
        q_ho = x_ho[None]
    else:
        q_ho = np.concatenate([space.query(imgs[ho[s : s + query_batch]]) for s in range(0, len(ho), query_batch)], axis=1)

    # Calibration: held-out images against the training index.
    d_train, _ = nearest(q_ho, x_tr)
    val = splits[ho] == "val"
    thr = threshold_for_flag_rate(d_train)
    thr_val, thr_test = threshold_for_flag_rate(d_train[val]), threshold_for_flag_rate(d_train[~val])
    ids = np.arange(len(ho))
    d_same, _ = nearest(q_ho, x_ho, q_codes=codes_ho, x_codes=codes_ho, q_ids=ids, x_ids=ids, mode="same")
    d_diff, _ = nearest(q_ho, x_ho, q_codes=codes_ho, x_codes=codes_ho, mode="different")
    d_other = np.minimum(d_train, d_diff)
    multi = np.isfinite(d_same)
    crossfit_thr = np.where(val, thr_test, thr_val)
    loo = {
        "n_query_images": int(multi.sum()),
        "n_patients": int(len(np.unique(codes_ho[multi]))),
        "index_size": int(len(tr) + len(ho) - 1),
        "rank1": float(np.mean(d_same[multi] < d_other[multi])),
        "at_shipped_threshold": _loo(d_same[multi], d_other[multi], thr),
        "crossfit": _loo(d_same[multi], d_other[multi], crossfit_thr[multi]),
        "per_source": {},
    }
    src_ho = np.asarray(trainset.sources).astype(str)[ho]
    for s in np.unique(src_ho[multi]):
        m = multi & (src_ho == s)
        loo["per_source"][str(s)] = {"n": int(m.sum()), **_loo(d_same[m], d_other[m], crossfit_thr[m])}

    # Pairs among held-out images.
    a, b = _same_patient_pairs(codes_ho)
    d_pos = pair_distance(q_ho, x_ho, a, b)
    views = np.asarray(trainset.views if trainset.views is not None else [""] * len(splits)).astype(str)[ho]
    labels = np.asarray(trainset.labels)[ho]
    label_key = np.array(["".join(map(str, r)) for r in labels])
    k_src = src_ho
    k_view = np.char.add(np.char.add(k_src, "|"), views)
    k_full = np.char.add(np.char.add(k_view, "|"), label_key)
    qa, nb, lvl = matched_negatives(a, codes_ho, [_codes(k_full), _codes(k_view), _codes(k_src)], rng)
    d_neg = pair_distance(q_ho, x_ho, qa, nb)
    ra, rb = rng.integers(0, len(ho), 4 * len(qa)), rng.integers(0, len(ho), 4 * len(qa))
    keep = codes_ho[ra] != codes_ho[rb]
    ra, rb = ra[keep][: len(qa)], rb[keep][: len(qa)]
    d_rand = pair_distance(q_ho, x_ho, ra, rb)
    pairs = {
        "n_positive_pairs": int(len(a)), "n_positive_patients": int(len(np.unique(codes_ho[a]))),
        "source_matched": {"n_negative_pairs": int(len(d_neg)), "auc": roc_auc(-d_pos, -d_neg),
                           "tpr_at_1pct_fpr": tpr_at_fpr(d_pos, d_neg),
                           "matched_on": {"source+view+labels": float(np.mean(lvl == 0)),
                                          "source+view": float(np.mean(lvl == 1)), "source": float(np.mean(lvl == 2))}},
        "random": {"n_negative_pairs": int(len(d_rand)), "auc": roc_auc(-d_pos, -d_rand),
                   "tpr_at_1pct_fpr": tpr_at_fpr(d_pos, d_rand)},
    }
    per_src_pairs = {}
    for s in np.unique(k_src[a]):
        mp, mn = k_src[a] == s, k_src[qa] == s
        if mp.sum() and mn.sum():
            per_src_pairs[str(s)] = {"n_pos": int(mp.sum()), "auc": roc_auc(-d_pos[mp], -d_neg[mn]),
                                     "tpr_at_1pct_fpr": tpr_at_fpr(d_pos[mp], d_neg[mn])}
    pairs["source_matched"]["per_source"] = per_src_pairs
    return {
        "space": getattr(space, "name", type(space).__name__),
        "calibration": {"threshold": thr, "n_heldout_images": int(len(ho)), "flag_rate": float(np.mean(d_train < thr)),
                        "threshold_val": thr_val, "threshold_test": thr_test,
                        "crossfit_flag_rate": float(np.mean(d_train < crossfit_thr))},
        "pairs": pairs,
        "leave_one_out": loo,
        "flags_heldout": (d_same < crossfit_thr) & multi,  # per image, for seed agreement; not JSON
    }


class _EmbeddedOnce:
    """A space whose index vectors of a set's images are computed once: every subset of by_source asks
    for the whole training split again. Images are found by their bytes; queries pass through."""

    def __init__(self, space, images: np.ndarray):
        self.space, self.kind, self.name = space, getattr(space, "kind", ""), getattr(space, "name", "")
        self._rows = {_digest(im): v for im, v in zip(images, space.index(images))}

    def index(self, images) -> np.ndarray:
        return np.stack([self._rows[_digest(im)] for im in images])

    def query(self, images) -> np.ndarray:
        return self.space.query(images)


def _digest(image: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest()


def by_source(space, trainset, *, seed: int = 0) -> list[dict]:
    """The same evaluation restricted to one source's held-out patients at a time, and to all of them
    without the source that holds the most same-patient pairs: the headline pools sources whose
    patients differ (children and adults, follow-ups hours or years apart), so it says where the
    verifier fails. The training index is the whole training split each time."""
    splits = np.asarray(trainset.splits).astype(str)
    sources = np.asarray(trainset.sources).astype(str)
    heldout = splits != "train"
    pid = np.asarray(trainset.patient_ids).astype(str)
    pairs_per_source = {s: sum(n * (n - 1) // 2 for n in np.unique(pid[heldout & (sources == s)], return_counts=True)[1])
                        for s in np.unique(sources[heldout])}
    largest = max(pairs_per_source, key=pairs_per_source.get)
    subsets = [("all held-out patients", heldout)]
    subsets += [(f"{s} only", heldout & (sources == s)) for s in sorted(pairs_per_source)]
    subsets.append((f"all but {largest}", heldout & (sources != largest)))
    embedded, rows = _EmbeddedOnce(space, np.asarray(trainset.images)), []
    for name, keep in subsets:
        ev = evaluate_space(embedded, trainset.subset(~heldout | keep), seed=seed)
        p, loo = ev["pairs"], ev["leave_one_out"]
        rows.append({"subset": name, "positive_pairs": p["n_positive_pairs"], "patients": p["n_positive_patients"],
                     "auc_source_matched": p["source_matched"]["auc"],
                     "tpr_at_1pct_fpr": p["source_matched"]["tpr_at_1pct_fpr"], "auc_random": p["random"]["auc"],
                     "loo_queries": loo["n_query_images"], "loo_catch_crossfit": loo["crossfit"]["catch_rate"],
                     "rank1": loo["rank1"]})
    return rows


def main(argv=None) -> None:
    """`python -m models.privacy.reid_eval --bundle B --trainset T`: the bundle's verifier on held-out
    patients, pooled and source by source (figures only, never pixels)."""
    import argparse
    import json

    from rich.console import Console
    from rich.table import Table

    # lazy: the bundle loader and the verifier's network are only needed when run as a command
    from models.bundle import load_bundle
    from models.privacy.reid import space_from_payload
    from models.trainset import load_trainset

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--trainset", required=True, help="an ingested set with train, val and test rows")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    space = space_from_payload(load_bundle(args.bundle).verifier)
    if space is None:
        raise SystemExit(f"{args.bundle} carries no re-identification verifier")
    rows = by_source(space, load_trainset(args.trainset))
    table = Table(title=f"{space.name}: held-out patients (val + test), source-matched negatives")
    for col in ("subset", "pos. pairs", "patients", "AUC", "TPR@1%FPR", "AUC random", "LOO queries", "LOO catch", "rank-1"):
        table.add_column(col, justify="left" if col == "subset" else "right")
    for r in rows:
        table.add_row(r["subset"], str(r["positive_pairs"]), str(r["patients"]), f"{r['auc_source_matched']:.3f}",
                      f"{r['tpr_at_1pct_fpr']:.1%}", f"{r['auc_random']:.3f}", str(r["loo_queries"]),
                      f"{r['loo_catch_crossfit']:.1%}", f"{r['rank1']:.1%}")
    Console(width=140).print(table)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2, default=float)


if __name__ == "__main__":
    main()
