"""`xraysynth worker`: start the generation worker (the ops CLI mounts run_worker)."""

from __future__ import annotations

import logging
import os
import socket

from service import queue
from workers.celery_app import app


def run_worker(concurrency: int | None = None, loglevel: str = "info", pool: str | None = None) -> None:
    """Consume the generation queue until stopped.

    Default: one process with the solo pool (a GPU box runs one worker per GPU; the model loads on the
    first task). ``concurrency`` > 1 uses prefork children, each loading its own model after the fork
    with cores/concurrency torch threads.
    """

    concurrency = max(1, concurrency or 1)
    pool = pool or ("solo" if concurrency == 1 else "prefork")
    if pool == "prefork" and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Set before the process starts (prometheus_client reads it at import): without it the
        # children's samples never reach the port the parent serves.
        logging.getLogger("xraysynth.worker").warning(
            "prefork worker without PROMETHEUS_MULTIPROC_DIR: its metrics will not count the children's work")
    app.worker_main([
        "worker",
        f"--loglevel={loglevel}",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        "-Q", queue.QUEUE,
        "-n", f"xraysynth-{os.getpid()}@{socket.gethostname()}",
        "--without-mingle", "--without-gossip",  # no start-up chatter; coordination is in Redis + Postgres
    ])


if __name__ == "__main__":
    run_worker()
