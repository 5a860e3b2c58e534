"""The GPU path on a CPU: the carried pack, the device job and the bundle that comes back in parts."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from models import gpu_run
from models.bundle import load_bundle
from models.gpu_pack import pack, unpack
from models.trainset import load_trainset

from .tiny import write_tiny_trainset


def test_the_pack_carries_train_and_val_only_and_unpacks_to_the_same_pixels_and_fingerprint(tmp_path):
    ts = write_tiny_trainset(tmp_path / "ts")
    t = pack(str(ts), str(tmp_path / "gpu"), budget_mb=50)
    assert t["lossless"] and t["max_abs_error"] == 0
    unpack(str(tmp_path / "gpu" / "pack.npz"), str(tmp_path / "un"))
    a, b = load_trainset(ts), load_trainset(tmp_path / "un")
    keep = np.isin(a.splits, ["train", "val"])
    assert np.array_equal(b.images, a.images[keep]) and np.array_equal(b.labels, a.labels[keep])
    assert "test" not in set(b.splits) and b.fingerprint == a.fingerprint  # the card names the real data


def test_the_device_job_trains_scores_and_brings_back_a_bundle_that_rejoins(tmp_path, monkeypatch):
    ts = write_tiny_trainset(tmp_path / "ts")
    pack(str(ts), str(tmp_path / "gpu"), budget_mb=50)
    monkeypatch.setattr(gpu_run, "PART_BYTES", 4 * 2**20)  # several parts out of the ~19 MB bundle
    out = tmp_path / "OUT"
    res = gpu_run.train(str(tmp_path / "gpu" / "pack.npz"), str(out), minutes=0.02, batch=8, device="cpu",
                        scratch=False, eval_every=10**6, iters=10**7, n_eval=8, bn_calib=16)
    start = load_bundle(gpu_run.SHIPPED).card["training"]["steps"]
    assert res["train"]["steps"] > start  # continued from the shipped default's step count
    assert res["val"]["n_val"] == 6 and 0 <= res["val"]["recall"] <= 1 and res["val"]["val_fd"] > 0
    assert len(res["bundle"]["parts"]) > 1 and all((out / p).stat().st_size <= 4 * 2**20 for p in res["bundle"]["parts"])
    assert json.loads((out / "results.json").read_text())["bundle"]["sha256"] == res["bundle"]["sha256"]
    joined = gpu_run.join(str(out), str(tmp_path / "back" / "bundle.pt"))
    assert hashlib.sha256(joined.read_bytes()).hexdigest() == res["bundle"]["sha256"]
    assert load_bundle(joined).card["training"]["steps"] == res["train"]["steps"]
