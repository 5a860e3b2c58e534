"""The worker's Celery app (Redis broker). `xraysynth worker` and
`python -m celery -A workers.celery_app worker` both start it.

The parent process never imports torch, so CUDA is never initialised before a fork: with the solo
pool the model loads on the first task; with prefork each child loads its own after the fork and
gets cores/concurrency torch threads. A timer thread in the parent runs the sweeper.
"""

from __future__ import annotations

import logging
import os
import sys

import redis
from celery import Celery, signals

import service.tables  # noqa: F401 — every table registered, so relationships between domains resolve
from service import db, heartbeat, storage
from service.observability.logs import configure_logging
from service.queue import celery_config
from service.settings import get_settings
from workers import leases, metrics
from workers.heartbeat import HeartbeatThread
from workers.produce import shutdown_pool
from workers.sweeper import SweeperThread

log = logging.getLogger("xraysynth.worker")

app = Celery("xraysynth", include=["workers.tasks"])
app.conf.update(celery_config(get_settings()))

_sweeper = None
_heartbeat = None
_concurrency = 1
_reservations: leases.Reservations | None = None


@signals.setup_logging.connect
def _setup_logging(loglevel=None, **_):
    # Connected, so Celery leaves logging to us: the same JSON lines (or console text) as the API.
    configure_logging(level=loglevel or "INFO")


@signals.worker_init.connect
def _on_worker_init(sender=None, **_):
    global _concurrency
    _concurrency = int(getattr(sender, "concurrency", None) or 1)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        raise RuntimeError("CUDA was initialised before the worker forked; load models inside tasks only")


@signals.worker_process_init.connect
def _on_child_start(**_):
    """A prefork child: fresh connections (sockets must not be shared across a fork), few torch threads."""

    if db.get_engine.cache_info().currsize:
        db.get_engine().dispose(close=False)  # leave the parent's connections alone
    db.get_engine.cache_clear()
    db.get_sessionmaker.cache_clear()
    storage.reset_clients()
    threads = max(1, (os.cpu_count() or 1) // max(1, _concurrency))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch  # after the fork: this child's own runtime

    torch.set_num_threads(threads)


@signals.task_received.connect
def _reserve(request=None, **_):
    """In the main process, as a message arrives: reserve its job until a task starts it (leases.py)."""
    global _reservations
    job = leases.job_of_task(request.name, request.args)
    if job is None:
        return
    try:
        if _reservations is None:
            _reservations = leases.Reservations()
        _reservations.take(job)
    except redis.RedisError as exc:  # the queued marker stays; the task still runs
        log.warning("could not reserve %s: %s", job, type(exc).__name__)


@signals.worker_ready.connect
def _start_sweeper(**_):
    global _sweeper, _heartbeat

    # Here, not at init: logging is set up by now. A development box keeps the port to itself; a
    # deployment's Prometheus scrapes it from another container (never a published port).
    settings = get_settings()
    metrics.serve(settings.worker_metrics_port, addr="127.0.0.1" if settings.is_development else "0.0.0.0")
    _sweeper = SweeperThread()
    _sweeper.start()
    log.info("sweeper running every %.0f s", _sweeper.interval)
    if heartbeat.uses_redis(get_settings().broker_url):
        _heartbeat = HeartbeatThread()
        _heartbeat.start()


@signals.worker_shutdown.connect
def _stop(**_):

    if _sweeper is not None:
        _sweeper.stop()
    if _heartbeat is not None:
        _heartbeat.stop()
    shutdown_pool()
