"""The worker's "I am alive" report (service.heartbeat reads it for /v1/health): a daemon thread in
the worker's main process reports at once, then every ``worker_heartbeat_s``; a clean stop removes
the entry, a killed worker's entry simply ages out."""

from __future__ import annotations

import logging
import threading

import redis

from service import heartbeat
from service.settings import get_settings

log = logging.getLogger("xraysynth.worker.heartbeat")


class HeartbeatThread(threading.Thread):
    def __init__(self, interval_s: float | None = None):
        super().__init__(name="xraysynth-heartbeat", daemon=True)
        self.interval = interval_s or get_settings().worker_heartbeat_s
        self.node = heartbeat.node_id()
        self.stopped = threading.Event()

    def run(self) -> None:
        failing = False
        while True:
            try:
                heartbeat.beat(self.node)
                if failing:
                    log.info("heartbeat reaches the broker again")
                failing = False
            except redis.RedisError as exc:
                if not failing:  # once per outage, not every few seconds
                    log.warning("heartbeat cannot reach the broker: %s", type(exc).__name__)
                failing = True
            if self.stopped.wait(self.interval):
                return

    def stop(self) -> None:
        self.stopped.set()
        try:
            heartbeat.forget(self.node)
        except redis.RedisError:
            pass  # it ages out
