"""Membership-inference attacks against a trained bundle, for the model card.

Members are training images, non-members held-out real images (val + test, other patients). An
attack gives each real image a statistic; its ROC AUC says how well it tells the two apart
(0.5 = not at all). Attacks:

(a) distance: the image's lowest score (the filter's score, see ``index.py``) against many generated
    samples - a generator that memorised would put samples closer to its members. Also reported per
    space (pixels only, embedding only).
(b) discriminator: the bundle's discriminator score D(x, y) on the image with its own labels - a
    discriminator that overfitted scores its members higher. Skipped if the bundle has none.

**Confounding.** Source and condition are confounded in this data (paediatric pneumonia from one
source, COVID from two others) and their mix differs between splits by chance; an attack could
then "detect membership" by detecting the source. So members and non-members are *matched*: they
are grouped by (source, exact label set), each group contributes the same number k = min(members,
non-members) of both, and the generated samples are conditioned on labels drawn from those same
matched images. Non-members in groups with no training image are dropped (counted in the result).
"""

from __future__ import annotations

import numpy as np

from models.metrics import two_sample_auc as roc_auc
from models.privacy.features import classifier_embeddings, pixel_features
from models.privacy.index import PrivacyIndex

AUC_TARGET = 0.55


def _auc_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982) standard error, so a reader can tell 0.53 from noise."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    return float(np.sqrt(max(var, 0.0)))


def _attack(name: str, member_stat, nonmember_stat, target: float) -> dict:
    auc = roc_auc(member_stat, nonmember_stat)
    # An attacker may flip the rule, so AUC 0.40 leaks as much as 0.60: judge max(AUC, 1 - AUC).
    worst = max(auc, 1 - auc)
    return {
        "attack": name,
        "auc": auc,
        "auc_se": _auc_se(auc, len(member_stat), len(nonmember_stat)),
        "auc_worst_direction": worst,
        "target": target,
        "target_met": bool(worst <= target),
    }


def matched_members(trainset, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """Rows of members (train) and non-members (val + test), matched by (source, label set).

    Returns (member_rows, nonmember_rows, info); both have the same length <= n and the same
    (source, labels) multiset.
    """
    splits = np.asarray(trainset.splits).astype(str)
    labels = np.asarray(trainset.labels).astype(np.uint8)
    sources = getattr(trainset, "sources", None)
    sources = np.asarray(sources).astype(str) if sources is not None else np.full(len(splits), "")
    keys = np.array([s + "|" + lab.tobytes().hex() for s, lab in zip(sources, labels)])
    _, group = np.unique(keys, return_inverse=True)
    mem_all = np.flatnonzero(splits == "train")
    non_all = np.flatnonzero(np.isin(splits, ["val", "test"]))
    rng = np.random.default_rng(seed)
    # Shuffle once, then take the first k of each group on both sides: matched, deterministic.
    mem_sh, non_sh = rng.permutation(mem_all), rng.permutation(non_all)
    mem_g, non_g = group[mem_sh], group[non_sh]
    rank_mem = _rank_within_group(mem_g)
    rank_non = _rank_within_group(non_g)
    n_mem_g = np.bincount(mem_g, minlength=group.max() + 1)
    n_non_g = np.bincount(non_g, minlength=group.max() + 1)
    k = np.minimum(n_mem_g, n_non_g)
    mem = mem_sh[rank_mem < k[mem_g]]
    non = non_sh[rank_non < k[non_g]]
    # Pair the two sides up by (group, rank) and keep n random pairs, so the mix stays matched.
    mem = mem[np.lexsort((rank_mem[rank_mem < k[mem_g]], group[mem]))]
    non = non[np.lexsort((rank_non[rank_non < k[non_g]], group[non]))]
    if len(mem) > n:
        keep = np.sort(rng.choice(len(mem), size=n, replace=False))
        mem, non = mem[keep], non[keep]
    info = {
        "matching": "by (source, exact label set); equal counts per group",
        "n_nonmember_candidates": int(len(non_all)),
        "n_nonmembers_unmatched": int(len(non_all) - k.sum()),
        "sources": {str(s): int((sources[mem] == s).sum()) for s in np.unique(sources[mem])},
    }
    return mem, non, info


def _rank_within_group(g: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... in order of appearance within each group value (vectorised)."""
    order = np.argsort(g, kind="stable")
    gs = g[order]
    start = np.r_[0, np.flatnonzero(gs[1:] != gs[:-1]) + 1]
    run_start = np.repeat(start, np.diff(np.r_[start, len(gs)]))
    ranks = np.empty(len(g), dtype=np.int64)
    ranks[order] = np.arange(len(g)) - run_start
    return ranks


def generate_images(bundle, labels: np.ndarray, *, seed: int, batch_size: int = 256) -> np.ndarray:
    """uint8 [N,128,128] from the bundle's generator, image i conditioned on labels[i], latent
    ``latent_batch(seed, i, 0)`` (the worker's determinism rule)."""
    import torch

    # lazy: loaded on first use, so importing models.privacy stays torch-free
    from models.imaging import to_uint8
    from models.latents import latent_batch

    g = bundle.generator
    dev = next(g.parameters()).device
    out = np.zeros((len(labels), bundle.image_size, bundle.image_size), dtype=np.uint8)
    with torch.inference_mode():
        for s in range(0, len(labels), batch_size):
            idx = np.arange(s, min(s + batch_size, len(labels)))
            z = torch.from_numpy(latent_batch(seed, idx, 0, bundle.nz)).to(dev)
            y = torch.from_numpy(np.asarray(labels[idx], dtype=np.float32)).to(dev)
            out[idx] = to_uint8(g(z, y))
    return out


def discriminator_scores(discriminator, images_uint8: np.ndarray, labels: np.ndarray, *, batch_size: int = 256):
    import torch

    # lazy: loaded on first use, so importing models.privacy stays torch-free
    from models.imaging import from_uint8

    dev = next(discriminator.parameters()).device
    out = []
    with torch.inference_mode():
        for s in range(0, len(images_uint8), batch_size):
            x = from_uint8(images_uint8[s : s + batch_size], device=dev)
            y = torch.from_numpy(np.asarray(labels[s : s + batch_size], dtype=np.float32)).to(dev)
            out.append(discriminator(x, y).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def membership_inference(
    bundle,
    trainset,
    n: int = 1000,
    *,
    n_generated: int = 2000,
    seed: int = 0,
    index: PrivacyIndex | None = None,
    target: float = AUC_TARGET,
) -> dict:
    """Run the attacks on up to ``n`` matched members and non-members (see module doc).

    ``index`` (the model's PrivacyIndex) only lends its distance scales, so scores are in the same
    units as the filter; without it the scales come from the real images under test.
    """
    mem, non, info = matched_members(trainset, n, seed=seed)
    if len(mem) < 2:
        raise ValueError("not enough matched members / non-members for a membership-inference test")
    images = np.asarray(trainset.images)
    labels = np.asarray(trainset.labels).astype(np.float32)
    real_rows = np.concatenate([mem, non])
    real_px = images[real_rows]
    real_emb = classifier_embeddings(bundle.classifier, real_px)

    # (a) distance to the nearest generated sample, generated for the matched images' label mix.
    rng = np.random.default_rng(seed + 1)
    gen_labels = labels[real_rows][rng.integers(0, len(real_rows), n_generated)]
    gen_px = generate_images(bundle, gen_labels, seed=seed)
    gen_emb = classifier_embeddings(bundle.classifier, gen_px)
    if index is not None:
        scales = (index.pixel_scale, index.embed_scale)
    else:
        patients = np.asarray(trainset.patient_ids).astype(str)[real_rows]
        ref = PrivacyIndex(pixels=pixel_features(real_px), embeddings=real_emb, patient_ids=patients, source_images=real_px)
        scales = (ref.pixel_scale, ref.embed_scale)
    gen_index = PrivacyIndex(
        pixels=pixel_features(gen_px),
        embeddings=gen_emb,
        patient_ids=[f"gen{i}" for i in range(n_generated)],
        pixel_scale=scales[0],
        embed_scale=scales[1],
    )
    nn = gen_index.nearest(real_px, real_emb)
    dp, de = gen_index.nearest_by_space(real_px, real_emb)
    m = len(mem)
    # Closer to the generator's samples -> more likely a member, so the statistic is -distance.
    attacks = {
        "distance": _attack("distance (combined score)", -nn.score[:m], -nn.score[m:], target),
        "distance_pixel": _attack("distance (pixels only)", -dp[:m], -dp[m:], target),
        "distance_embedding": _attack("distance (embedding only)", -de[:m], -de[m:], target),
    }

    # (b) discriminator score on the real image with its own labels.
    if getattr(bundle, "discriminator", None) is None:
        attacks["discriminator"] = {"attack": "discriminator", "skipped": "the bundle ships no discriminator"}
    else:
        d = discriminator_scores(bundle.discriminator, real_px, labels[real_rows])
        attacks["discriminator"] = _attack("discriminator score", d[:m], d[m:], target)

    ran = [a for a in attacks.values() if "auc" in a]
    return {
        "n_members": int(m),
        "n_nonmembers": int(len(non)),
        "n_generated": int(n_generated),
        "seed": int(seed),
        "target": target,
        "target_met": bool(all(a["target_met"] for a in ran)),
        "attacks": attacks,
        **info,
    }
