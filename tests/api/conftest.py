"""Fixtures for the REST tests: a published model version, settings overrides, request helpers."""

from __future__ import annotations

import os
import uuid

import pytest

from tests.factories import make_dataset, make_model_version, put_release_object, row_counts

# Conditions of the default test model: Hernia is below the release policy's patient minimum (20).
CONDITIONS = ("No Finding", "Mass", "Nodule", "Hernia")
PATIENTS = {"No Finding": 400, "Mass": 60, "Nodule": 35, "Hernia": 7}
PURPOSE = "Pre-training a lung-mass detector before fine-tuning on hospital data."


@pytest.fixture
def settings_env():
    """Set XRAYSYNTH_* variables for one test and re-read settings; restored (and re-read) afterwards."""
    from tests.conftest import _reset_service_caches

    saved: dict[str, str | None] = {}

    def apply(**values: object) -> None:
        for k, v in values.items():
            name = f"XRAYSYNTH_{k.upper()}"
            saved.setdefault(name, os.environ.get(name))
            os.environ[name] = str(v)
        _reset_service_caches()  # service.db.reset_caches() clears get_settings too

    yield apply
    for name, old in saved.items():
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old
    if saved:
        _reset_service_caches()


@pytest.fixture
def model(db):
    """A published model version offering CONDITIONS; committed so the API sees it."""
    mv = make_model_version(db, name="cxr-dcgan", version="1.0", conditions=CONDITIONS, patients_per_condition=PATIENTS)
    db.commit()
    return mv


@pytest.fixture
def request_dataset(api):
    def do(user, expect: int = 202, **body):
        payload = {"conditions": {"Mass": 10}, "purpose": PURPOSE, **body}
        r = api.post("/v1/datasets", json=payload, headers=user.headers)
        assert r.status_code == expect, r.text
        return r.json()

    return do


@pytest.fixture
def counts(db):
    """Row counts of every table, read in a fresh transaction."""

    def read() -> dict[str, int]:
        db.rollback()
        return row_counts(db)

    return read


@pytest.fixture
def dataset_at(db, model):
    """Insert a dataset owned by `user` directly at some status (setup, not a transition)."""

    def make(user, status: str = "pending_review", spec=None):
        ds = make_dataset(db, account_id=user.id, model_version_id=model.id, status=status, spec=spec)
        db.commit()
        return ds.id

    return make


@pytest.fixture
def ready_dataset(db, model, researcher):
    """A dataset brought to `ready` through the transition table by the system, with its release objects
    and shard rows in place, as the worker would leave it."""
    from service.audit.service import SYSTEM
    from service.datasets.models import DatasetStatus, Shard, ShardStatus
    from service.datasets.transitions import transition

    ds = make_dataset(db, account_id=researcher.id, model_version_id=model.id, spec={"Mass": 4})
    prefix = f"datasets/{ds.id}/"
    files = {
        "manifest.csv": b"index,file,condition,seed,sha256,heatmap,probability\n",
        "dataset_card.md": b"# Dataset card\n",
        "dataset_card.json": b'{"dataset_id": "%s", "title": "released card"}' % str(ds.id).encode(),
        "preview.png": b"\x89PNG\r\n\x1a\nnot really a png",
    }
    digests = {name: put_release_object(prefix + name, data) for name, data in files.items()}
    shards = {}
    for i in range(2):
        data = f"shard {i} bytes ".encode() * (i + 1)
        key = f"{prefix}shards/shard-{i:05d}.tar"
        digest = put_release_object(key, data, content_type="application/x-tar")
        db.add(Shard(dataset_id=ds.id, index=i, start=2 * i, stop=2 * i + 2, seed_base=0, object_key=key,
                     sha256=digest, size=len(data), status=ShardStatus.done))
        shards[f"shards/shard-{i:05d}.tar"] = data
        digests[f"shards/shard-{i:05d}.tar"] = digest
    for target in (DatasetStatus.approved, DatasetStatus.generating, DatasetStatus.ready):
        transition(db, ds, target, actor=SYSTEM)
    ds.done_images = 4
    db.commit()
    return {"id": ds.id, "files": {**files, **shards}, "sha256": digests}


def random_id() -> str:
    return str(uuid.uuid4())
