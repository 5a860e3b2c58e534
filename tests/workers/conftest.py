"""Worker tests: a tiny registered + published model version, real worker processes, helpers.

The model is ``untrained_bundle()`` with its generator's transposed-convolution weights scaled up
(GEN_GAIN): the default random init makes near-constant images that all look alike, which would make
any nearest-neighbour test meaningless. Its training set is 40 toy "patients" x 2 images made by the
same generator (a latent and a slightly perturbed copy, so calibration sees same-patient pairs), and
one extra patient whose two images are exactly what the pipeline produces for PLANTED indices of a
request with PLANT_SEED / PLANT_SPEC: the memorisation filter must reject those and regenerate them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]

GEN_GAIN = 8.0
N_PATIENTS = 40
PLANT_SEED = 4242
PLANT_SPEC = {"Atelectasis": 12, "Mass": 12}  # image order: Atelectasis 0-11, Mass 12-23
PLANTED = (3, 14)
SHARD_SIZE = 8

WORKER_ENV = {
    "XRAYSYNTH_SHARD_SIZE": str(SHARD_SIZE),
    "XRAYSYNTH_CPU_BATCH_SIZE": "4",
    "XRAYSYNTH_SWEEP_INTERVAL_S": "1",
    "XRAYSYNTH_LEASE_TTL_S": "2",
    "XRAYSYNTH_ENCODE_PROCESSES": "1",
    "OMP_NUM_THREADS": "1",  # two workers and the test process share two cores
}


@dataclass
class ToyModel:
    bundle_bytes: bytes
    trainset: object
    trainset_dir: Path


def _toy_bundle_bytes() -> bytes:
    import torch

    from models.bundle import bundle_bytes, untrained_bundle

    b = untrained_bundle(seed=0)
    with torch.no_grad():
        for m in b.generator.modules():
            if isinstance(m, torch.nn.ConvTranspose2d):
                m.weight.mul_(GEN_GAIN)
    card = {
        "summary": "toy generator for the worker tests (random weights)",
        "intended_use": "tests only",
        "caveats": "random weights; images are not chest X-rays",
        "metrics": {"precision": 0.5, "recall": 0.5},
        "membership_inference": {"target": 0.6, "target_met": True,
                                 "attacks": {"distance": {"auc": 0.52}, "discriminator": {"auc": 0.55}}},
        "how_to_cite": "xraysynth toy model, 2026",
    }
    return bundle_bytes(generator=b.generator, classifier=b.classifier, discriminator=b.discriminator,
                        conditions=b.conditions, config=b.config, card=card)


def _generate(bundle, seed: int, indices, attempts, condition: str) -> np.ndarray:
    """What the worker's DeviceStage makes for these images of one condition (same code path)."""
    from types import SimpleNamespace

    from workers.device import DeviceStage

    stage = DeviceStage(SimpleNamespace(bundle=bundle, device="cpu"), seed, [(condition, 1 << 40)])
    _, pixels, _ = stage.generate(np.asarray(indices, np.int64), np.broadcast_to(np.asarray(attempts, np.int64),
                                                                                np.shape(indices)).copy())
    return pixels


def _generate_each(bundle, seed: int, indices, attempt: int, conditions: list[str]) -> np.ndarray:
    out = np.zeros((len(indices), 128, 128), np.uint8)
    for c in set(conditions):
        sel = np.array([k for k, ck in enumerate(conditions) if ck == c])
        out[sel] = _generate(bundle, seed, np.asarray(indices)[sel], attempt, c)
    return out


@pytest.fixture(scope="session")
def toy_model(tmp_path_factory) -> ToyModel:
    from models.bundle import load_bundle
    from models.conditions import CONDITIONS
    from models.trainset import TrainSet, fingerprint, write_trainset

    data = _toy_bundle_bytes()
    from workers.device import prepare_for_inference

    bundle = prepare_for_inference(load_bundle(data))  # fp16 round trip: exactly what the worker loads
    rng = np.random.default_rng(0)
    p = np.arange(N_PATIENTS)
    conds = [CONDITIONS[i % len(CONDITIONS)] for i in p]
    a = _generate_each(bundle, 999, p, 0, conds)
    b = _generate_each(bundle, 999, p, 1, conds)  # same patient, "another image": a different draw...
    mix = 0.8 * a.astype(np.float32) + 0.2 * b.astype(np.float32)  # ...kept close to the first one
    second = np.clip(np.rint(mix + rng.normal(0, 2, a.shape)), 0, 255).astype(np.uint8)
    order = {c: i for i, c in enumerate(CONDITIONS)}
    spec_blocks = sorted(PLANT_SPEC, key=order.get)
    starts = np.cumsum([0] + [PLANT_SPEC[c] for c in spec_blocks])
    planted_conds = [spec_blocks[int(np.searchsorted(starts, i, side="right") - 1)] for i in PLANTED]
    planted = _generate_each(bundle, PLANT_SEED, PLANTED, 0, planted_conds)

    images = np.concatenate([a, second, planted])
    cond_names = conds + conds + planted_conds
    labels = np.zeros((len(images), len(CONDITIONS)), np.uint8)
    labels[np.arange(len(images)), [order[c] for c in cond_names]] = 1
    patient_ids = np.array([f"toy-{i:03d}" for i in p] * 2 + ["toy-planted"] * len(PLANTED))
    n = len(images)
    sources = np.array(["nih" if i % 2 else "ieee8023" for i in range(n)])
    licenses = np.array(["CC0 1.0" if s == "nih" else "CC BY-NC-SA 4.0" for s in sources])
    meta = [{"image_id": f"img{i:04d}", "patient_id": patient_ids[i], "split": "train", "source": sources[i],
             "license": licenses[i], "view": "PA"} for i in range(n)]
    out = tmp_path_factory.mktemp("trainset")
    write_trainset(out, images, labels, meta, list(CONDITIONS))
    ts = TrainSet(images, labels, patient_ids, np.array(["train"] * n), sources, licenses, list(CONDITIONS),
                  fingerprint(images, labels), np.array([m["image_id"] for m in meta]), np.array(["PA"] * n), {})
    return ToyModel(data, ts, out)


@pytest.fixture
def model_version(clean, toy_model, monkeypatch):
    """The toy model registered and published (fresh tables every test), and API policy relaxed so its
    two-to-three patients per condition may be requested."""
    from service.audit.service import SYSTEM
    from service.db import session_scope
    from service.settings import get_settings
    from workers.registration import publish, register_model_version

    monkeypatch.setenv("XRAYSYNTH_MIN_TRAINING_PATIENTS", "1")
    get_settings.cache_clear()
    with session_scope() as s:
        mv = register_model_version(s, bundle_bytes=toy_model.bundle_bytes, name="toy-dcgan",
                                    version=uuid.uuid4().hex[:8], trainset=toy_model.trainset, actor=SYSTEM)
        publish(s, mv, SYSTEM)
        return mv


# -- worker processes ---------------------------------------------------------------------------------

@dataclass
class Worker:
    proc: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        os.killpg(self.proc.pid, 9)  # the worker and its encode pool, like a machine dying
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 15)
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(10)
            except ProcessLookupError:
                pass

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@pytest.fixture
def start_worker(infra, toy_model, tmp_path) -> Iterator[Callable[..., Worker]]:
    workers: list[Worker] = []

    def start(pool: str = "solo", concurrency: int = 1, prefetch: int = 1, **env_overrides: str) -> Worker:
        env = {**os.environ, **infra.env, **WORKER_ENV, "XRAYSYNTH_TRAINSET_DIR": str(toy_model.trainset_dir),
               **env_overrides}
        log = tmp_path / f"worker-{len(workers)}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", f"--pool={pool}",
             f"--concurrency={concurrency}", f"--prefetch-multiplier={prefetch}", "-Q", "generation",
             "--loglevel=INFO", "-n", f"test-{uuid.uuid4().hex[:6]}@%h", "--without-mingle", "--without-gossip"],
            cwd=REPO, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        w = Worker(proc, log)
        workers.append(w)
        return w

    yield start
    for w in workers:
        w.stop()


def wait_for(predicate: Callable[[], object], timeout: float, what: str, workers: list[Worker] = ()) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    logs = "\n\n".join(f"--- worker log ---\n{w.tail()}" for w in workers)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")


# -- API helpers --------------------------------------------------------------------------------------

@pytest.fixture
def api_server(api):
    """The API on a real port (the researcher CLI speaks HTTP), in a thread of the test process."""
    from tests.serving import api_in_thread

    with api_in_thread() as url:
        yield url


def request_dataset(api, user, spec: dict, seed: int, fmt: str = "png", heatmaps: bool = True) -> str:
    r = api.post("/v1/datasets", headers=user.headers, json={
        "conditions": spec, "seed": seed, "format": fmt, "heatmaps": heatmaps,
        "purpose": "worker pipeline tests: small synthetic dataset",
    })
    assert r.status_code == 202, r.text
    return r.json()["id"]


def approve(api, admin, dataset_id: str) -> None:
    r = api.post(f"/v1/datasets/{dataset_id}/reviews", headers=admin.headers,
                 json={"decision": "approve", "reason": "test approval: evidence reviewed"})
    assert r.status_code == 200, r.text
    assert r.json()["dataset"]["status"] == "approved"


def get_dataset(api, user, dataset_id: str) -> dict:
    r = api.get(f"/v1/datasets/{dataset_id}", headers=user.headers)
    assert r.status_code == 200, r.text
    return r.json()


def wait_status(api, user, dataset_id: str, status: str, timeout: float = 90, workers=()) -> dict:
    def check():
        ds = get_dataset(api, user, dataset_id)
        if ds["status"] in ("failed", "cancelled") and ds["status"] != status:
            raise AssertionError(f"dataset {ds['status']}: {ds.get('error')}\n" +
                                 "\n".join(w.tail() for w in workers))
        return ds if ds["status"] == status else None

    return wait_for(check, timeout, f"dataset {dataset_id} to be {status}", workers)


def shard_hashes(dataset_id: str) -> list[tuple[int, str, int]]:
    from sqlalchemy import select

    from service.datasets.models import Shard
    from service.db import session_scope

    with session_scope() as s:
        return [(sh.index, sh.sha256, sh.size) for sh in
                s.scalars(select(Shard).where(Shard.dataset_id == uuid.UUID(dataset_id)).order_by(Shard.index))]


def provenance(dataset_id: str) -> list:
    from sqlalchemy import select

    from service.datasets.models import SyntheticImage
    from service.db import session_scope

    with session_scope() as s:
        return list(s.execute(select(SyntheticImage.index, SyntheticImage.attempt, SyntheticImage.sha256,
                                     SyntheticImage.nn_distance, SyntheticImage.condition)
                              .where(SyntheticImage.dataset_id == uuid.UUID(dataset_id))
                              .order_by(SyntheticImage.index)))


def release_object(dataset_id: str, name: str, bucket: str = "release") -> bytes:
    from service import storage
    from service.settings import get_settings

    s = get_settings()
    b = s.release_bucket if bucket == "release" else s.private_bucket
    prefix = "datasets" if bucket == "release" else "evidence"
    return storage.get_bytes(b, f"{prefix}/{dataset_id}/{name}")
