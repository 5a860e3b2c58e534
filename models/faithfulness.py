"""Do the heatmaps show the finding? A deletion test and the share of empty heatmaps, per condition.

For condition c and each image (real test images that carry c; synthetic images generated for c),
the Grad-CAM of c (relative to a blank image of the same mean grey, models/gradcam.py) picks the
hottest 10 % of pixels. Those are replaced by the image's own mean grey level (a blur would leave
the large, low-contrast opacities most findings are), and the classifier's probability for c is
read again. The control deletes a region of the same shape and size at a random place (the
hot mask circularly shifted by a random offset), so the comparison is between *where* the map
points and anywhere else, not between a blob and scattered pixels. The margin is
mean(p_after_random - p_after_hot): positive when the map's region matters more than a random one.
An *empty* heatmap is one with no positive evidence anywhere (the image raises the condition's logit
over the blank image nowhere); those images carry no region and are left out of the deletion test.

``card_section(result)`` gives the model card's entry (``with_heatmap_faithfulness(card, entry)`` puts it
under ``card["heatmaps"]``); a condition is ``informative`` when at most
5 % of its synthetic heatmaps are empty and its synthetic margin is more than two standard errors
above zero, otherwise the card
and the preview should say its heatmaps are not evidence.

    python -m models.faithfulness --bundle models/checkpoints/default/bundle.pt --trainset runs/trainset
    python -m models.faithfulness --bundle models/checkpoints/default/bundle.pt \
        --from-json runs/faithfulness_default.json --write-card
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .bundle import load_bundle
from .gradcam import gradcam_batch
from .latents import latent_batch
from .registry import write_bundle
from .sampling import images_to_float
from .trainset import load_trainset

MAX_EMPTY_SHARE = 0.05


def _fill(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x)


@torch.no_grad()
def _prob(classifier, x: torch.Tensor, k: int) -> torch.Tensor:
    return torch.sigmoid(classifier(x).float()[:, k])


def deletion_test(classifier, x: torch.Tensor, k: int, fraction: float = 0.1, seed: int = 0,
                  batch: int = 128) -> dict:
    """Images x [N,1,H,W] in [-1,1], condition index k -> empty share and the deletion margin."""
    g = torch.Generator().manual_seed(seed)
    n_empty, p0s, phot, prnd = 0, [], [], []
    for s in range(0, len(x), batch):
        xb = x[s : s + batch]
        h, w = xb.shape[-2:]
        cam = gradcam_batch(classifier, xb, k, out_size=h).heatmaps  # [B,H,W] in [0,1]
        empty = cam.flatten(1).amax(1) <= 0
        n_empty += int(empty.sum())
        keep = ~empty
        if not keep.any():
            continue
        xb, cam = xb[keep], cam[keep]
        n_px = round(fraction * h * w)
        thr = cam.flatten(1).topk(n_px, dim=1).values[:, -1]
        hot = cam >= thr[:, None, None]
        dy = torch.randint(h // 4, 3 * h // 4, (len(xb),), generator=g)
        dx = torch.randint(w // 4, 3 * w // 4, (len(xb),), generator=g)
        rnd = torch.stack([torch.roll(m, (int(a), int(b)), dims=(0, 1)) for m, a, b in zip(hot, dy, dx)])
        fill = _fill(xb)
        p0s.append(_prob(classifier, xb, k))
        phot.append(_prob(classifier, torch.where(hot[:, None], fill, xb), k))
        prnd.append(_prob(classifier, torch.where(rnd[:, None], fill, xb), k))
    out = {"n": len(x), "empty_share": n_empty / max(len(x), 1), "n_tested": 0}
    if p0s:
        p0, ph, pr = torch.cat(p0s), torch.cat(phot), torch.cat(prnd)
        diff = (pr - ph).numpy()
        se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else None
        out.update({"n_tested": len(diff), "mean_prob": float(p0.mean()), "drop_hot": float((p0 - ph).mean()),
                    "drop_random": float((p0 - pr).mean()), "margin": float(diff.mean()), "margin_se": se,
                    "share_hot_drops_more": float((diff > 0).mean())})
    return out


def measure(bundle, trainset, n_per_condition: int = 64, seed: int = 0, split: str = "test") -> dict:
    """Per condition, on real ``split`` images that carry it and on synthetic images generated for it."""
    ts = load_trainset(trainset)
    te = ts.split(split)
    clf, G = bundle.classifier.eval(), bundle.generator.eval()
    res = {"split": split, "fraction_deleted": 0.1, "n_per_condition_max": n_per_condition,
           "fill": "the image's mean grey level", "control": "same mask, random circular shift",
           "heatmap_resolution": None, "conditions": {}}
    with torch.no_grad():
        res["heatmap_resolution"] = list(clf.feature_map(torch.zeros(1, 1, 128, 128)).shape[-2:])
    rng = np.random.default_rng(seed)
    for k, c in enumerate(ts.conditions):
        pos = np.flatnonzero(te.labels[:, k] > 0)
        pos = rng.choice(pos, min(len(pos), n_per_condition), replace=False) if len(pos) else pos
        real = deletion_test(clf, images_to_float(torch.from_numpy(te.images[pos])), k, seed=seed) if len(pos) else None
        idx = np.arange(n_per_condition)
        z = torch.from_numpy(latent_batch(seed + 99, idx, 0, G.nz))
        y = F.one_hot(torch.full((n_per_condition,), k), len(ts.conditions)).float()
        with torch.no_grad():
            syn = G(z, y).float().clamp(-1, 1)
        res["conditions"][c] = {"real": real, "synthetic": deletion_test(clf, syn, k, seed=seed)}
    return res


def card_section(result: dict) -> dict:
    """The model card's heatmap entry: the figures, and per condition whether its heatmaps mean anything."""
    per = {}
    for c, r in result["conditions"].items():
        syn = r["synthetic"]
        margin, se = syn.get("margin"), syn.get("margin_se") or 0.0
        informative = syn["empty_share"] <= MAX_EMPTY_SHARE and margin is not None and margin - 2 * se > 0
        per[c] = {"informative": informative, "synthetic": syn, "real": r["real"]}
    return {"method": ("Grad-CAM of the requested condition relative to a blank image of the same mean grey level; "
                       "deleting its hottest 10 % of pixels vs a same-shaped region at a random place (mean-grey "
                       "fill); margin = mean(p after random - p after hot)"),
            "caveat": ("the map's baseline is the deletion's fill, so the test checks that the map points at the pixels "
                       "the classifier uses, not that the classifier uses the finding rather than a shortcut (source, "
                       "markers, exposure)"),
            "heatmap_resolution": result["heatmap_resolution"], "split": result["split"],
            "rule": (f"informative: <= {MAX_EMPTY_SHARE:.0%} empty synthetic heatmaps and a synthetic margin more "
                     "than two standard errors above 0"),
            "uninformative_conditions": [c for c, v in per.items() if not v["informative"]], "conditions": per}


def with_heatmap_faithfulness(card: dict, section: dict) -> dict:
    """A copy of a model card with the heatmap entry set (for the packager or the privacy report)."""
    return {**card, "heatmaps": section}


def write_card_section(bundle_path, section: dict) -> None:
    """Put the entry into a bundle's card (weights, fp16 and verifier kept) and into card.json beside it."""
    b = load_bundle(bundle_path)
    b.card = with_heatmap_faithfulness(dict(b.card), section)
    write_bundle(bundle_path, b)


def _fmt(x) -> str:
    return "-" if x is None else f"{x:+.3f}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--trainset", help="needed unless --from-json")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--out", default="runs/faithfulness.json")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--from-json", help="card entry measured before (the --out of an earlier run): write it, measure nothing")
    p.add_argument("--write-card", action="store_true", help="put the entry into the bundle's card and card.json beside it")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.from_json:
        res = json.loads(Path(a.from_json).read_text())
    elif not a.trainset:
        p.error("--trainset is needed to measure (or pass --from-json)")
    else:
        res = card_section(measure(load_bundle(a.bundle), a.trainset, a.n))
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=2))
    if a.write_card:
        write_card_section(a.bundle, res)
    print(f"{'condition':20s} {'empty syn':>9s} {'empty real':>10s} {'margin syn':>10s} {'margin real':>11s}  informative")
    for c, v in res["conditions"].items():
        r, s = v["real"] or {}, v["synthetic"]
        print(f"{c:20s} {s['empty_share']:9.0%} {r.get('empty_share', float('nan')):10.0%} {_fmt(s.get('margin')):>10s} "
              f"{_fmt(r.get('margin')):>11s}  {v['informative']}")


if __name__ == "__main__":
    main()
