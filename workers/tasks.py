"""The three tasks the API and the workers send by name (service/queue.py), plus a manual sweep.
Thin wrappers: the work lives in plan.py, shard.py, finalise.py and sweeper.py."""

from __future__ import annotations

import uuid

from service import queue
from workers.celery_app import app


@app.task(name=queue.PLAN_DATASET, ignore_result=True)
def plan_dataset(dataset_id: str) -> str:
    from workers.plan import plan_dataset as plan

    return plan(uuid.UUID(dataset_id))


@app.task(name=queue.GENERATE_SHARD, ignore_result=True)
def generate_shard(dataset_id: str, shard_index: int) -> str:
    from workers.shard import run_shard

    return run_shard(uuid.UUID(dataset_id), int(shard_index))


@app.task(name=queue.FINALISE_DATASET, ignore_result=True)
def finalise_dataset(dataset_id: str) -> str:
    from workers.finalise import finalise_dataset as finalise

    return finalise(uuid.UUID(dataset_id))


@app.task(name=queue.SWEEP, ignore_result=True)
def sweep() -> str:
    from workers.sweeper import sweep as run

    return str(run(force=True))
