"""The Celery contract, the one place both sides read: task names, the queue, the configuration.

The API holds a Celery *client* only and enqueues by task name; workers/ registers its tasks under
these names and configures its app from `celery_config`. Nothing here imports workers/ (or torch).
"""

from __future__ import annotations

import uuid
from functools import lru_cache

from celery import Celery

from service.settings import Settings, get_settings

PLAN_DATASET = "xraysynth.plan_dataset"
GENERATE_SHARD = "xraysynth.generate_shard"
FINALISE_DATASET = "xraysynth.finalise_dataset"
SWEEP = "xraysynth.sweep"

QUEUE = "generation"

# Longest a shard task may take (1,000 images on a slow CPU, with storage retries) — the broker's
# visibility timeout must exceed it, or Redis would hand a running task to a second worker.
SHARD_TASK_HARD_LIMIT_S = 3600
VISIBILITY_TIMEOUT_S = 2 * SHARD_TASK_HARD_LIMIT_S


def celery_config(settings: Settings) -> dict:
    broker = settings.broker_url
    conf: dict = {
        "broker_url": broker,
        "task_acks_late": True,  # a task is acknowledged only when done: a killed worker's task is redelivered
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,  # no worker hoards shards others could run
        "task_default_queue": QUEUE,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_backend": None,
        "task_ignore_result": True,
        "worker_hijack_root_logger": False,
        "broker_connection_retry_on_startup": True,
        "task_time_limit": SHARD_TASK_HARD_LIMIT_S,
        "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_S},
    }
    if broker.startswith("filesystem://"):
        # Embedded fallback without a broker server: folders shared by API and worker on one box.
        folder = settings.broker_folder
        conf["broker_transport_options"] = {
            "data_folder_in": folder,
            "data_folder_out": folder,
            "processed_folder": folder + "-processed",
            "control_folder": folder + "-control",  # kombu's default is ./control in the cwd
            "store_processed": False,
        }
    return conf


@lru_cache
def client() -> Celery:
    app = Celery("xraysynth-api")
    app.conf.update(celery_config(get_settings()))
    return app


def enqueue_generation(dataset_id: uuid.UUID) -> str:
    result = client().send_task(PLAN_DATASET, args=[str(dataset_id)], queue=QUEUE)
    return result.id


def ping_broker() -> None:
    with client().connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
