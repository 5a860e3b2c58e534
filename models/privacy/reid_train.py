"""Training the CNN verifier (``reid_cnn``) on the training split only (hospital zone).

Only training patients with two or more images are used; a fixed, patient-disjoint 15 % of them
(the same for every seed) is held back for early stopping, so val/test patients are never seen.
Batches hold P patients x up to K of their images (augmented: shifts <= 6 px of 128, rotations
+-5 deg, scale +-5 %, gamma, brightness/contrast, slight noise); the loss is SupCon (temperature
``tau``) or CosFace (margin ``margin``, scale ``scale``, one class per training patient). After
every epoch the early-stopping patients' pair AUC (same patient vs same-source strangers, 5 per
pair) is measured and the best epoch's weights are kept. Deterministic given ``seed`` on CPU.

    python -m models.privacy.reid_train --trainset runs/trainset --seed 0 --out runs/reid/cnn_seed0.pt
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from models.imaging import from_uint8
from models.metrics import two_sample_auc
from models.privacy.reid_cnn import SIZE, CNNSpace, ReidNet, cnn_from_payload, standardise

ES_FRACTION = 0.15
ES_SPLIT_SEED = 12345  # fixed: every seed early-stops on the same held-back patients


def split_patients(patient_ids, es_fraction: float = ES_FRACTION):
    """-> (fit rows, early-stop rows) among rows whose patient has >= 2 images."""
    pid = np.asarray(patient_ids).astype(str)
    u, codes, cnt = np.unique(pid, return_inverse=True, return_counts=True)
    multi = np.flatnonzero(cnt >= 2)
    if len(multi) < 4:
        raise ValueError("training a verifier needs at least four patients with two or more images")
    rng = np.random.default_rng(ES_SPLIT_SEED)
    n_es = max(2, int(round(es_fraction * len(multi))))
    es = set(rng.choice(multi, n_es, replace=False).tolist())
    rows = np.flatnonzero(cnt[codes] >= 2)
    is_es = np.array([codes[r] in es for r in rows])
    return rows[~is_es], rows[is_es]


def augment(x: torch.Tensor, g: torch.Generator, size: int) -> torch.Tensor:
    """x float [B,1,s,s] in [-1,1] -> augmented and standardised."""
    b = x.shape[0]
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(b, generator=g)  # noqa: E731
    v = ((x + 1) / 2).clamp(0, 1)
    v = v.pow(torch.exp(0.15 * torch.randn(b, generator=g)).view(b, 1, 1, 1))  # gamma
    v = v * u(0.8, 1.2).view(b, 1, 1, 1) + u(-0.1, 0.1).view(b, 1, 1, 1)  # contrast, brightness
    a, sc = torch.deg2rad(u(-5, 5)), u(0.95, 1.05)
    tx, ty = u(-6, 6) * 2 / 128, u(-6, 6) * 2 / 128  # shift in 128 px pixels, affine_grid units
    theta = torch.stack([torch.stack([sc * torch.cos(a), -sc * torch.sin(a), tx], 1),
                         torch.stack([sc * torch.sin(a), sc * torch.cos(a), ty], 1)], 1)
    grid = F.affine_grid(theta, [b, 1, size, size], align_corners=False)
    v = F.grid_sample(v, grid, padding_mode="border", align_corners=False)
    v = v + 0.01 * torch.randn(v.shape, generator=g)
    return standardise(v, size)


def supcon(z: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    sim = z @ z.T / tau
    eye = torch.eye(len(z), dtype=torch.bool)
    sim = sim.masked_fill(eye, -1e9)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    logp = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    has = pos.any(1)
    return -((logp * pos).sum(1)[has] / pos.sum(1)[has]).mean()


def es_auc(net, x_es: torch.Tensor, codes: np.ndarray, sources: np.ndarray, size: int, seed: int = 0) -> float:
    """Pair AUC of the early-stop patients: all same-patient pairs vs 5 same-source strangers each."""
    net.eval()
    with torch.inference_mode():
        z = torch.cat([net(standardise(x_es[s : s + 256], size)) for s in range(0, len(x_es), 256)]).numpy()
    net.train()
    rng = np.random.default_rng(seed)
    pos, neg = [], []
    for i in range(len(codes)):
        same = np.flatnonzero((codes == codes[i]) & (np.arange(len(codes)) > i))
        pos += [float(z[i] @ z[j]) for j in same]
        cand = np.flatnonzero((sources == sources[i]) & (codes != codes[i]))
        if len(same) and len(cand):
            neg += [float(z[i] @ z[j]) for j in rng.choice(cand, 5 * len(same))]
    return two_sample_auc(pos, neg)


def fit_cnn(pixels_uint8, patient_ids, sources=None, *, seed: int = 0, arch: str = "small", size: int | None = None,
            width: int = 32, dim: int = 128, epochs: int = 40, patients_per_batch: int = 32, k_max: int = 3,
            loss: str = "supcon", tau: float = 0.1, margin: float = 0.35, scale: float = 30.0, lr: float = 2e-3,
            weight_decay: float = 5e-4, init_body: dict | None = None, max_minutes: float | None = None,
            log=print) -> CNNSpace:
    """Train on one split's images (see module doc) and return the early-stopped space."""
    t0 = time.time()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    size = int(size or (128 if arch == "classifier" else SIZE))
    pid = np.asarray(patient_ids).astype(str)
    src = np.asarray(sources).astype(str) if sources is not None else np.full(len(pid), "")
    fit_rows, es_rows = split_patients(pid)
    px = np.asarray(pixels_uint8)
    pool = lambda rows: F.adaptive_avg_pool2d(from_uint8(px[rows]), size) if size != px.shape[-1] else from_uint8(px[rows])  # noqa: E731
    x_fit, x_es = pool(fit_rows), pool(es_rows)
    fit_codes = np.unique(pid[fit_rows], return_inverse=True)[1]
    es_codes = np.unique(pid[es_rows], return_inverse=True)[1]
    by_patient = [np.flatnonzero(fit_codes == c) for c in range(fit_codes.max() + 1)]
    net = ReidNet(arch, width, dim)
    if init_body is not None:
        net.body.load_state_dict({k: v.float() for k, v in init_body.items()})
    params = list(net.parameters())
    head = None
    if loss == "cosface":
        head = torch.nn.Parameter(F.normalize(torch.randn(len(by_patient), dim, generator=g), dim=1))
        params.append(head)
    elif loss != "supcon":
        raise ValueError(f"unknown loss {loss!r}")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(by_patient) / patients_per_batch)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / steps_per_epoch) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    best, best_state, history = -1.0, None, []
    net.train()
    for ep in range(epochs):
        order = rng.permutation(len(by_patient))
        for s in range(0, len(order), patients_per_batch):
            grp = order[s : s + patients_per_batch]
            rows, lab = [], []
            for c in grp:
                pick = rng.choice(by_patient[c], min(k_max, len(by_patient[c])), replace=False)
                rows += pick.tolist()
                lab += [c] * len(pick)
            z = net(augment(x_fit[rows], g, size))
            lab_t = torch.as_tensor(lab)
            if loss == "supcon":
                loss_v = supcon(z, lab_t, tau)
            else:
                cos = z @ F.normalize(head, dim=1).T
                loss_v = F.cross_entropy(scale * (cos - margin * F.one_hot(lab_t, len(by_patient))), lab_t)
            opt.zero_grad()
            loss_v.backward()
            opt.step()
            sched.step()
        auc = es_auc(net, x_es, es_codes, src[es_rows], size)
        history.append(round(auc, 4))
        if auc > best:
            best, best_state = auc, copy.deepcopy(net.state_dict())
        log(f"seed {seed} epoch {ep + 1}/{epochs}: loss {loss_v.item():.3f} early-stop AUC {auc:.3f} "
            f"(best {best:.3f}) {time.time() - t0:.0f}s")
        if max_minutes is not None and time.time() - t0 > 60 * max_minutes:
            log(f"seed {seed}: stopping after epoch {ep + 1}: {max_minutes} min budget spent")
            break
    net.load_state_dict(best_state)
    info = {"arch": arch, "size": size, "loss": loss, "seed": seed, "epochs_run": len(history), "epochs_planned": epochs,
            "best_epoch": int(np.argmax(history)) + 1, "early_stop_auc": round(best, 4), "early_stop_history": history,
            "patients_per_batch": patients_per_batch, "k_max": k_max, "lr": lr, "tau": tau if loss == "supcon" else None,
            "init": "bundle classifier body" if init_body is not None else "scratch",
            "n_fit_patients": len(by_patient), "n_fit_images": int(len(fit_rows)),
            "n_early_stop_patients": int(es_codes.max() + 1), "n_early_stop_images": int(len(es_rows)),
            "train_minutes": round((time.time() - t0) / 60, 1), "threads": torch.get_num_threads()}
    return CNNSpace(net, size, info)


def save_space(space: CNNSpace, path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(space.payload(), path)


def load_space(path) -> CNNSpace:
    return cnn_from_payload(torch.load(path, weights_only=True))


def main(argv=None) -> None:
    # lazy: the command line needs them, fit_cnn (used by reid_ship and tests) does not
    from models.trainset import load_trainset

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trainset", required=True)
    ap.add_argument("--out", required=True, help="where to save the space's payload (.pt)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arch", default="small", choices=["small", "classifier"])
    ap.add_argument("--init-from-bundle", default=None, help="start the classifier trunk from this bundle's classifier")
    ap.add_argument("--loss", default="supcon", choices=["supcon", "cosface"])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--k-max", type=int, default=3)
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ts = load_trainset(args.trainset)
    tr = np.asarray(ts.splits).astype(str) == "train"
    init = None
    if args.init_from_bundle:
        # lazy: only a classifier-initialised fit reads a bundle
        from models.bundle import load_bundle

        init = load_bundle(args.init_from_bundle).classifier.body.state_dict()
    space = fit_cnn(ts.images[tr], ts.patient_ids[tr], ts.sources[tr], seed=args.seed, arch=args.arch, size=args.size,
                    width=args.width, epochs=args.epochs, loss=args.loss, lr=args.lr, k_max=args.k_max, init_body=init,
                    max_minutes=args.max_minutes)
    save_space(space, args.out)
    print(json.dumps({k: v for k, v in space.info.items() if k != "early_stop_history"}))


if __name__ == "__main__":
    main()
