"""Recipe ablations at equal budget: ``python -m models.ablation --trainset runs/trainset``.

Every arm starts from the same bundle's G and D (the shipped default unless ``--start``), runs the
same number of steps with the same seed (so the same real batches and latents), and is scored on the
val split in the bundle classifier's feature space: Fréchet distance and k-NN precision / recall /
coverage (models/evaluate.py), averaged over the ``--score-seeds`` sampling seeds with their spread.
Equal *steps* rather than equal wall time: the shared CPU box's load varies, and each arm's wall
time is reported beside its figures. Writes ``OUT/ablation.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from .bundle import load_bundle
from .evaluate import frechet_distance, precision_recall_coverage
from .sampling import embed_images, generate_images
from .train import GanConfig, train_gan
from .trainset import load_trainset

FULL = "translation,cutout,color"
ARMS = {
    "baseline": {"augment": "translation"},
    "diffaug": {"augment": FULL},
    "diffaug_lecam": {"augment": FULL, "lecam": 0.3},
    "diffaug_r1": {"augment": FULL, "r1": 0.1},
    "diffaug_lecam_r1": {"augment": FULL, "lecam": 0.3, "r1": 0.1},
}
SHIPPED = Path(__file__).resolve().parent / "checkpoints" / "default" / "bundle.pt"


METRICS = ("val_fd", "precision", "recall", "coverage")


def score(bundle_path, trainset, seeds: tuple[int, ...] = (777,), device: str = "cpu", max_n: int | None = None) -> dict:
    """Val FD and precision / recall / coverage of a bundle's generator (val label rows, one image
    each), averaged over the sampling seeds given. With more than one seed each metric also has its
    standard deviation over them (``val_fd_sd``, ...): the noise a comparison of arms has to beat."""
    dev = torch.device(device)
    b = load_bundle(bundle_path, device=dev)
    va = load_trainset(trainset).split("val")
    if max_n is not None and max_n < len(va):
        va = va.subset(np.linspace(0, len(va) - 1, max_n).astype(int))
    real = embed_images(b.classifier, va.images, dev)
    runs = []
    for seed in seeds:
        fake = embed_images(b.classifier, generate_images(b.generator, va.labels.astype("float32"), seed, dev), dev)
        runs.append({"val_fd": frechet_distance(fake, real), **precision_recall_coverage(real, fake)})
    out = {**runs[0], **{m: float(np.mean([r[m] for r in runs])) for m in METRICS}, "n_val": len(va),
           "sample_seeds": list(seeds), "per_seed": runs}  # per seed: arms are compared pairwise
    if len(seeds) > 1:
        out.update({f"{m}_sd": float(np.std([r[m] for r in runs], ddof=1)) for m in METRICS})
    return out


def run(trainset: str, out: str, steps: int, start: str, arms: list[str], threads: int, seed: int,
        score_start: bool = True, device: str = "cpu", batch: int = 64, score_seeds: tuple[int, ...] = (777,)) -> dict:
    torch.set_num_threads(threads)
    start_step = int((load_bundle(start).card.get("training") or {}).get("steps") or 0)
    results = {"start": str(start), "start_step": start_step, "steps_per_arm": steps, "threads": threads,
               "seed": seed, "batch_size": batch, "device": device, "score_seeds": list(score_seeds),
               "arms": {"start": score(start, trainset, score_seeds, device=device)} if score_start else {}}
    for name in arms:
        t0 = time.time()
        folder = Path(out) / name
        train_gan(GanConfig(trainset=trainset, out=str(folder), classifier=str(start), init_from=str(start),
                            iters=start_step + steps, seed=seed, eval_every=10**9, ckpt_every=10**9, resume=False,
                            threads=threads, device=device, batch_size=batch, progress=False, **ARMS[name]))
        results["arms"][name] = {**score(folder / "bundle.pt", trainset, score_seeds, device=device),
                                 "train_wall_s": time.time() - t0,
                                 "recipe": ARMS[name]}
        Path(out, "ablation.json").write_text(json.dumps(results, indent=2))
        print(json.dumps({name: results["arms"][name]}), flush=True)
    return results


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trainset", required=True)
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--start", default=str(SHIPPED))
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated arm names")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-start", action="store_true", help="do not re-score the starting bundle")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--score-seeds", default="777", help="comma-separated sampling seeds the scores average over")
    a = p.parse_args(argv)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    run(a.trainset, a.out, a.steps, a.start, [s for s in a.arms.split(",") if s], a.threads, a.seed,
        not a.skip_start, a.device, a.batch, tuple(int(x) for x in a.score_seeds.split(",")))


if __name__ == "__main__":
    main()
