"""The tasks the API and the workers send by name (service/queue.py), plus a manual sweep.
Thin wrappers: the work lives in plan.py, shard.py, finalise.py and sweeper.py."""

from __future__ import annotations

import uuid

from service import queue
from service.observability.logs import log_context
from workers import finalise, metrics, plan, shard, sweeper
from workers.celery_app import app


@app.task(name=queue.PLAN_DATASET, ignore_result=True)
def plan_dataset(dataset_id: str) -> str:
    with log_context(dataset_id=dataset_id):
        return plan.plan_dataset(uuid.UUID(dataset_id))


@app.task(name=queue.GENERATE_SHARD, ignore_result=True)
def generate_shard(dataset_id: str, shard_index: int) -> str:
    with log_context(dataset_id=dataset_id, shard=int(shard_index)), metrics.shard_clock():
        return shard.run_shard(uuid.UUID(dataset_id), int(shard_index))


@app.task(name=queue.FINALISE_DATASET, ignore_result=True)
def finalise_dataset(dataset_id: str) -> str:
    with log_context(dataset_id=dataset_id):
        return finalise.finalise_dataset(uuid.UUID(dataset_id))


@app.task(name=queue.SWEEP, ignore_result=True)
def sweep() -> str:
    return str(sweeper.sweep(force=True))
