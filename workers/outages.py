"""Telling an outage of the broker or the database from a failure of the work itself.

A shard or finalise step that meets one is interrupted, not failed: it ends without touching the
dataset, its lease lapses, and once Redis and PostgreSQL answer again the sweeper finds the job
neither queued, reserved nor leased and runs it again (shards are idempotent). Failing the dataset instead
would turn a Redis restart into an admin's retry.
"""

from __future__ import annotations

import logging

import redis
from kombu.exceptions import OperationalError as BrokerUnavailable

from service.errors import database_unavailable

log = logging.getLogger("xraysynth.worker")


def is_outage(exc: BaseException) -> bool:
    return (isinstance(exc, redis.ConnectionError | redis.TimeoutError | BrokerUnavailable)
            or database_unavailable(exc))


def interrupted(what: str, exc: BaseException) -> str:
    log.warning("%s interrupted by an outage (%s); the sweeper runs it again once the broker and the "
                "database answer", what, type(exc).__name__)
    return "interrupted"
