"""Which generation workers are alive, as the API sees it: each worker process writes its node id and
the time into one sorted set in the broker's Redis every ``worker_heartbeat_s``; a worker that missed
three reports counts as gone. A supervisor that saw its worker die removes the entry at once.

One sorted-set read answers /v1/health, so the check stays cheap under load. Only a Redis broker has
the set (the folder broker of a one-box run without Redis has no workers either).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from functools import lru_cache

import redis

from service.settings import get_settings

WORKERS_KEY = "xraysynth:workers"
# What a supervisor says about the worker it is bringing back, shown by /v1/health while none is alive.
SUPERVISOR_NOTE_KEY = "xraysynth:workers:note"
MISSED_BEATS = 3
# Entries of workers gone this long are dropped by the next report of any worker.
FORGET_AFTER_S = 24 * 3600


def node_id(pid: int | None = None, host: str | None = None) -> str:
    return f"{host or socket.gethostname()}:{pid or os.getpid()}"


def uses_redis(broker_url: str) -> bool:
    return broker_url.startswith(("redis://", "rediss://"))


@lru_cache
def _client(url: str, pid: int) -> redis.Redis:  # one client per process: sockets must not cross a fork
    # A connection the server closed (it restarted) is retried once on a fresh one, not reported as down.
    return redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1,
                                retry_on_error=[redis.ConnectionError])


def client() -> redis.Redis:
    return _client(get_settings().broker_url, os.getpid())


def beat(node: str, now: float | None = None) -> None:
    now = time.time() if now is None else now
    pipe = client().pipeline(transaction=False)
    pipe.zadd(WORKERS_KEY, {node: now})
    pipe.zremrangebyscore(WORKERS_KEY, "-inf", now - FORGET_AFTER_S)
    pipe.execute()


def forget(node: str) -> None:
    client().zrem(WORKERS_KEY, node)


def set_note(text: str, ttl_s: float) -> None:
    client().set(SUPERVISOR_NOTE_KEY, text, px=max(1, int(ttl_s * 1000)))


def clear_note() -> None:
    client().delete(SUPERVISOR_NOTE_KEY)


@dataclass(frozen=True)
class Liveness:
    alive: int
    last_seen_s_ago: float | None  # None: no worker has ever reported (or its entry was removed)
    note: str | None

    def describe(self) -> str:
        if self.alive:
            return "ok"
        why = ("no worker has reported" if self.last_seen_s_ago is None
               else f"no worker has reported for {self.last_seen_s_ago:.0f} s")
        return f"unavailable ({why}{'; ' + self.note if self.note else ''})"


def liveness(now: float | None = None) -> Liveness:
    now = time.time() if now is None else now
    window = MISSED_BEATS * get_settings().worker_heartbeat_s
    pipe = client().pipeline(transaction=False)
    pipe.zcount(WORKERS_KEY, now - window, "+inf")
    pipe.zrevrange(WORKERS_KEY, 0, 0, withscores=True)
    pipe.get(SUPERVISOR_NOTE_KEY)
    alive, latest, note = pipe.execute()
    last = now - latest[0][1] if latest else None
    return Liveness(int(alive), last, note.decode(errors="replace") if note else None)
