"""A worker's Prometheus metrics, served on its own port (XRAYSYNTH_WORKER_METRICS_PORT, default 9101).

The stage code calls these helpers; labels are fixed small sets (stage, privacy check, store), never
dataset ids, purpose text or pixels. A prefork worker's children share samples through files in
PROMETHEUS_MULTIPROC_DIR (run_worker sets one up before anything imports prometheus_client).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

log = logging.getLogger("xraysynth.worker.metrics")
# Several processes of one server share samples through files there; it must exist before the first metric.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
disable_created_metrics()

STAGES = ("generate", "heatmaps", "filter", "encode", "upload", "record")
CHECKS = ("copy", "reid")  # the memorisation filter's two checks
STORES = ("s3", "db")
RETRY_KINDS = ("storage", "task")
OUTCOMES = ("done", "failed", "interrupted")  # interrupted: an outage; the sweeper runs it again

IMAGES_GENERATED = Counter("xraysynth_worker_images_generated", "Synthetic images generated and kept (after the filter)")
IMAGES_FLAGGED = Counter("xraysynth_worker_images_flagged", "Generated images dropped by a privacy check, by check",
                         ["check"])
STAGE_SECONDS = Histogram("xraysynth_worker_stage_seconds", "Time a shard spends in each stage", ["stage"],
                          buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
SHARDS = Counter("xraysynth_worker_shards", "Shard tasks finished, by outcome (done, failed, interrupted)", ["outcome"])
RETRIES = Counter("xraysynth_worker_retries", "Retried operations: a storage call, or a whole shard task", ["kind"])
ERRORS = Counter("xraysynth_worker_errors", "Errors talking to object storage (s3) or the database (db)", ["store"])

for _stage in STAGES:
    STAGE_SECONDS.labels(_stage)
for _check in CHECKS:
    IMAGES_FLAGGED.labels(_check)
for _store in STORES:
    ERRORS.labels(_store)
for _kind in RETRY_KINDS:
    RETRIES.labels(_kind)
for _outcome in OUTCOMES:
    SHARDS.labels(_outcome)


class _ShardClock:
    """Seconds per stage over one shard. A stage timed inside another (generate inside the filter's
    loop) counts for itself only: each stage's figure is its own time, and they add up to the shard's."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.nested: list[float] = []


_clock: ContextVar[_ShardClock | None] = ContextVar("xraysynth_shard_clock", default=None)


@contextmanager
def shard_clock() -> Iterator[_ShardClock]:
    """Collect the stage times of one shard (observe them with ``observe_shard`` once it is recorded)."""
    token = _clock.set(_ShardClock())
    try:
        yield _clock.get()
    finally:
        _clock.reset(token)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """``with metrics.stage("encode"): ...`` inside a shard; outside one (benchmarks) it records nothing."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}")
    clock = _clock.get()
    if clock is None:
        yield
        return
    started = time.perf_counter()
    clock.nested.append(0.0)
    try:
        yield
    finally:
        took = time.perf_counter() - started
        inner = clock.nested.pop()
        clock.seconds[name] += took - inner
        if clock.nested:
            clock.nested[-1] += took


def shard_recorded(images: int, flagged: Mapping[str, int]) -> None:
    """A shard is recorded: its images, each privacy check's rejections, and one observation per stage
    of the current shard clock (a shard that fails half-way records no stage times)."""
    clock = _clock.get()
    if clock is not None:
        for name, seconds in clock.seconds.items():
            STAGE_SECONDS.labels(name).observe(seconds)
    images_generated(images)
    for check, n in flagged.items():
        images_flagged(check, n)
    shard_finished("done")


def images_generated(n: int) -> None:
    if n > 0:
        IMAGES_GENERATED.inc(n)


def images_flagged(check: str, n: int = 1) -> None:
    if check not in CHECKS:
        raise ValueError(f"unknown privacy check {check!r}")
    if n > 0:
        IMAGES_FLAGGED.labels(check).inc(n)


def error(store: str) -> None:
    if store not in STORES:
        raise ValueError(f"unknown store {store!r}")
    ERRORS.labels(store).inc()


def retried(kind: str) -> None:
    if kind not in RETRY_KINDS:
        raise ValueError(f"unknown retry kind {kind!r}")
    RETRIES.labels(kind).inc()


def shard_finished(outcome: str) -> None:
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown shard outcome {outcome!r}")
    SHARDS.labels(outcome).inc()


def serve(port: int, addr: str = "0.0.0.0") -> bool:
    """Serve /metrics on ``port`` (0: do not serve). A port already taken is logged, not fatal: the
    worker still generates, only its metrics are missing."""
    if not port:
        return False
    registry = None
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=folder)
    try:
        if registry is None:
            start_http_server(port, addr=addr)
        else:
            start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        log.warning("worker metrics not served: port %s is unavailable (%s)", port, exc.strerror or exc)
        return False
    log.info("worker metrics on :%s/metrics", port)
    return True
