"""The device machine's job: train from a carried pack, score on val, bring the bundle back in parts.

    python3 -m models.gpu_run train --pack runs/gpu/pack.npz --minutes 8 --batch 256 --out "$OUT"
    python -m models.gpu_run join --parts DIR --out runs/gpu/bundle.pt       (back here)

``train`` unpacks the pack (models/gpu_pack.py), continues from the shipped default's G and D (or
``--scratch``) with the default recipe in bf16 on CUDA for ``--minutes``, keeps the best-on-val EMA
generator, scores it on val (FD, precision / recall / coverage; models/ablation.py's ``score``) and
writes ``results.json``, ``history.json``, ``samples.png`` and the bundle split into parts under the
device tool's 16 MiB-a-file limit. The test-split evaluation (``xraysynth evaluate``) runs here,
after ``join``: the test split never leaves the hospital machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from .ablation import SHIPPED, score
from .gpu_pack import unpack
from .train import GanConfig, train_gan

PART_BYTES = 15 * 2**20


def split_file(path: Path, out: Path) -> dict:
    data = path.read_bytes()
    parts = []
    for k in range(0, len(data), PART_BYTES):
        name = f"{path.name}.part{k // PART_BYTES}"
        (out / name).write_bytes(data[k : k + PART_BYTES])
        parts.append(name)
    return {"file": path.name, "parts": parts, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def join(parts_dir: str, out: str) -> Path:
    d = Path(parts_dir)
    meta = json.loads((d / "results.json").read_text())["bundle"]
    data = b"".join((d / p).read_bytes() for p in meta["parts"])
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise ValueError("the joined bundle's sha256 differs from the one recorded on the device machine")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_bytes(data)
    return Path(out)


def train(pack: str, out: str, minutes: float, batch: int, device: str, scratch: bool, eval_every: int,
          iters: int, n_eval: int = 730, bn_calib: int = 2048, score_n: int | None = None) -> dict:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="xraysynth-gpu-"))
    t0 = time.time()
    transport = unpack(pack, str(work / "trainset"))
    t_unpack = time.time() - t0
    dev_name = torch.cuda.get_device_name(0) if device == "cuda" and torch.cuda.is_available() else device
    cfg = GanConfig(trainset=str(work / "trainset"), out=str(work / "run"), classifier=str(SHIPPED),
                    init_from=None if scratch else str(SHIPPED), iters=iters, minutes=minutes, batch_size=batch,
                    device=device, bf16=True, eval_every=eval_every, ckpt_every=10**9, ckpt_minutes=10**6,
                    n_eval=n_eval, bn_calib=bn_calib,
                    threads=max(1, (os.cpu_count() or 2) - 1), progress=False, log_every=eval_every)
    summary = train_gan(cfg)
    val = score(work / "run" / "bundle.pt", str(work / "trainset"), device=device, max_n=score_n)
    results = {"device": dev_name, "torch": torch.__version__, "minutes_budget": minutes, "batch_size": batch,
               "from": "scratch" if scratch else f"shipped default ({SHIPPED.name})", "transport": transport,
               "unpack_s": t_unpack, "train": {k: v for k, v in summary.items() if k != "history"}, "val": val,
               "bundle": split_file(work / "run" / "bundle.pt", out_dir)}
    for name in ("history.json", "samples.png"):
        if (work / "run" / name).exists():
            shutil.copy(work / "run" / name, out_dir / name)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps({"steps": summary["steps"], "s_per_iter": summary["s_per_iter"], "val": val}, default=str))
    return results


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--pack", default="runs/gpu/pack.npz")
    t.add_argument("--out", default=os.environ.get("OUT", "runs/gpu/out"))
    t.add_argument("--minutes", type=float, default=6.0)
    t.add_argument("--batch", type=int, default=256)
    t.add_argument("--device", default="cuda")
    t.add_argument("--scratch", action="store_true", help="start from random weights, not the shipped default")
    t.add_argument("--eval-every", type=int, default=2000)
    t.add_argument("--iters", type=int, default=10**7, help="step cap (the --minutes budget usually ends first)")
    t.add_argument("--n-eval", type=int, default=730, help="generated images per val check")
    t.add_argument("--bn-calib", type=int, default=2048, help="images to re-estimate the EMA generator's BatchNorm")
    t.add_argument("--score-n", type=int, default=None, help="val images in the final score (default: all)")
    j = sub.add_parser("join")
    j.add_argument("--parts", required=True)
    j.add_argument("--out", required=True)
    a = p.parse_args(argv)
    if a.cmd == "train":
        train(a.pack, a.out, a.minutes, a.batch, a.device, a.scratch, a.eval_every, a.iters, a.n_eval, a.bn_calib,
              a.score_n)
    else:
        print(join(a.parts, a.out))


if __name__ == "__main__":
    main()
