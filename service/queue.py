"""Enqueue worker tasks by name. The API holds a Celery *client* only: it never imports workers/
(and so never imports torch)."""

from __future__ import annotations

import uuid
from functools import lru_cache

from celery import Celery

from service.settings import get_settings

PLAN_DATASET = "xraysynth.plan_dataset"
GENERATE_SHARD = "xraysynth.generate_shard"
FINALISE_DATASET = "xraysynth.finalise_dataset"

QUEUE = "generation"


@lru_cache
def client() -> Celery:
    from workers.config import celery_config  # plain settings, no torch (checked by a test)

    app = Celery("xraysynth-api")
    app.conf.update(celery_config(get_settings()))
    return app


def enqueue_generation(dataset_id: uuid.UUID) -> str:
    result = client().send_task(PLAN_DATASET, args=[str(dataset_id)], queue=QUEUE)
    return result.id


def ping_broker() -> None:
    with client().connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
