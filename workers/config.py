"""Celery configuration shared by the API's client and the workers. Imports nothing heavy."""

from __future__ import annotations

from service.settings import Settings

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
        "task_default_queue": "generation",
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
            "store_processed": False,
        }
    return conf
