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

    if not logging.getLogger().handlers:
        logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    concurrency = max(1, concurrency or 1)
    pool = pool or ("solo" if concurrency == 1 else "prefork")
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
