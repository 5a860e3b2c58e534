"""The pipeline's steps called in-process (no Celery): plan → every shard → finalise."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from sqlalchemy import func, select

from tests.workers.conftest import PLANT_SEED, PLANT_SPEC, PLANTED


def make_dataset(session, *, account_id, model_version_id, spec, seed, fmt="png", heatmaps=True, status="approved"):
    from service.datasets.models import Dataset, DatasetStatus, ImageFormat

    ds = Dataset(account_id=account_id, model_version_id=model_version_id, spec=spec, total_images=sum(spec.values()),
                 format=ImageFormat(fmt), heatmaps=heatmaps, seed=seed, purpose="testing the worker pipeline end to end",
                 status=DatasetStatus(status), done_images=0)
    session.add(ds)
    session.flush()
    return ds


def test_plan_shards_finalise_in_process(model_version, researcher, monkeypatch):
    monkeypatch.setenv("XRAYSYNTH_SHARD_SIZE", "8")
    monkeypatch.setenv("XRAYSYNTH_ENCODE_PROCESSES", "0")
    monkeypatch.setenv("XRAYSYNTH_CPU_BATCH_SIZE", "4")
    from service.settings import get_settings
    from workers.config import worker_settings

    get_settings.cache_clear()
    worker_settings.cache_clear()
    from service import storage
    from service.datasets.models import Dataset, Shard, SyntheticImage
    from service.db import session_scope
    from workers import finalise, plan, shard

    with session_scope() as s:
        ds = make_dataset(s, account_id=researcher.id, model_version_id=model_version.id, spec=PLANT_SPEC,
                          seed=PLANT_SEED)
        ds_id = ds.id
    assert plan.plan_dataset(ds_id) == "planned"
    for i in range(3):
        assert shard.run_shard(ds_id, i) == "recorded"
    assert finalise.finalise_dataset(ds_id) == "ready"
    with session_scope() as s:
        ds = s.get(Dataset, ds_id)
        assert ds.status.value == "ready", ds.error
        rows = list(s.scalars(select(SyntheticImage).where(SyntheticImage.dataset_id == ds_id)
                              .order_by(SyntheticImage.index)))
        assert [r.index for r in rows] == list(range(24))
        assert all(r.nn_distance is not None for r in rows)
        regenerated = {r.index for r in rows if r.attempt > 0}
        assert set(PLANTED) <= regenerated
        assert ds.privacy_summary["n_rejected"] >= len(PLANTED)
    s3 = get_settings()
    card = json.loads(storage.get_bytes(s3.release_bucket, f"datasets/{ds_id}/dataset_card.json"))
    print(json.dumps(card, indent=1)[:3000])
    ev = json.loads(storage.get_bytes(s3.private_bucket, f"evidence/{ds_id}/evidence.json"))
    print({k: ev[k] for k in ("n_rejected", "n_released", "closest_pairs")})
    open("/work/main/runs/preview-inprocess.png", "wb").write(storage.get_bytes(s3.release_bucket, f"datasets/{ds_id}/preview.png"))
    open("/work/main/runs/pairs-inprocess.png", "wb").write(storage.get_bytes(s3.private_bucket, f"evidence/{ds_id}/pairs.png"))
