"""Carry a training set's train and val splits to a device machine in one small file, and back out.

``pack`` writes ``OUT/pack.npz``: each image WebP-encoded (lossless when the budget allows, else
lossy at the highest quality that fits, with the pixel error measured and recorded), labels, the
meta rows and the original ``trainset.json`` (so the card's training-data fingerprint stays the
real data's). ``unpack`` rebuilds a training-set folder that ``load_trainset`` reads. The test
split never travels: metrics on it are computed back on the hospital machine.

    python -m models.gpu_pack pack --trainset runs/trainset --out .gpu --budget-mb 40
    python -m models.gpu_pack unpack --pack .gpu/pack.npz --out /tmp/trainset
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from .trainset import META_COLUMNS, load_trainset

SPLITS = ("train", "val")


def _encode(img: np.ndarray, quality: int | None) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(np.ascontiguousarray(img))
    if quality is None:
        im.save(buf, "WEBP", lossless=True, quality=100, method=4)
    else:
        im.save(buf, "WEBP", quality=quality, method=4)
    return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"))


def _choose_quality(images: np.ndarray, budget_bytes: int, sample: int = 200) -> int | None:
    """Lossless if a sample's projected size fits the budget, else the highest lossy quality that does."""
    idx = np.linspace(0, len(images) - 1, min(sample, len(images))).astype(int)
    for q in (None, 98, 95, 92, 90, 85, 80):
        projected = sum(len(_encode(images[i], q)) for i in idx) * len(images) / len(idx)
        if projected * 1.05 <= budget_bytes:
            return q
    raise ValueError(f"the splits do not fit in {budget_bytes / 2**20:.0f} MiB even at quality 80")


def pack(trainset: str, out: str, budget_mb: float = 40.0) -> dict:
    ts = load_trainset(trainset)
    keep = np.isin(ts.splits, SPLITS)
    images, labels = ts.images[keep], ts.labels[keep]
    with open(Path(trainset) / "meta.csv", newline="") as f:
        rows = [r for r, k in zip(csv.DictReader(f), keep) if k]
    quality = _choose_quality(images, int(budget_mb * 2**20))
    blobs = [_encode(im, quality) for im in images]
    err = np.array([np.abs(_decode(b).astype(np.int16) - im).max() for b, im in zip(blobs, images)])
    mae = float(np.mean([np.abs(_decode(b).astype(np.int16) - im).mean() for b, im in
                         zip(blobs[:: max(1, len(blobs) // 500)], images[:: max(1, len(blobs) // 500)])]))
    transport = {"codec": "webp", "lossless": quality is None, "quality": quality, "n_images": len(blobs),
                 "splits": list(SPLITS), "max_abs_error": int(err.max()), "mean_abs_error_sample": mae,
                 "bytes": int(sum(map(len, blobs)))}
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    Path(out).mkdir(parents=True, exist_ok=True)
    np.savez(Path(out) / "pack.npz", blob=np.frombuffer(b"".join(blobs), np.uint8), offsets=offsets,
             labels=labels, meta=np.array(json.dumps(rows)), info=np.array(json.dumps(ts.info)),
             transport=np.array(json.dumps(transport)))
    return transport


def unpack(pack_path: str, out: str) -> dict:
    z = np.load(pack_path)
    blob, off = z["blob"].tobytes(), z["offsets"]
    images = np.stack([_decode(blob[off[i] : off[i + 1]]) for i in range(len(off) - 1)])
    rows = json.loads(str(z["meta"]))
    info = {**json.loads(str(z["info"])), "transport": json.loads(str(z["transport"]))}
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / "images.npy", images)
    np.save(d / "labels.npy", z["labels"])
    with open(d / "meta.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=META_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (d / "trainset.json").write_text(json.dumps(info, indent=2))  # the real data's fingerprint and counts
    return info["transport"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("--trainset", required=True)
    a.add_argument("--out", default=".gpu")
    a.add_argument("--budget-mb", type=float, default=40.0)
    b = sub.add_parser("unpack")
    b.add_argument("--pack", required=True)
    b.add_argument("--out", required=True)
    args = p.parse_args(argv)
    res = pack(args.trainset, args.out, args.budget_mb) if args.cmd == "pack" else unpack(args.pack, args.out)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
