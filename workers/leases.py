"""Who is working on what, in Redis (the broker), so the sweeper can tell live work from lost work.

* lease ``xraysynth:lease:<job>`` — held by the worker running a job, with a TTL refreshed by a
  background thread; a killed worker's lease simply expires.
* queued marker ``xraysynth:queued:<job>`` — set when a task message is sent, cleared when a worker
  receives it;
* reservation ``xraysynth:reserved:<job>`` — set when a worker takes the message from the broker, with a
  TTL its main process refreshes until the task starts: a worker killed between taking a message and
  starting it lets the reservation expire, instead of hiding the job behind a queued marker until the
  broker redelivers the unacknowledged message (``VISIBILITY_TIMEOUT_S``, hours later);
* a job that is neither queued, reserved nor leased (and not done) has been lost.
* start counter ``xraysynth:starts:<job>`` — a shard whose worker dies every time is failed, not
  re-run forever.

A job is "shard:<dataset>:<index>", "plan:<dataset>" or "finalise:<dataset>". The database stays the
source of truth for what is *done*; these keys only say what is in flight.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from functools import lru_cache

import redis

from service import queue
from service.queue import VISIBILITY_TIMEOUT_S
from service.settings import get_settings
from workers.config import worker_settings

PREFIX = "xraysynth:"
STARTS_TTL_S = 7 * 24 * 3600

# Delete the lease only if we still own it (it may have expired and been taken by another worker).
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
_REFRESH = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"


def key(kind: str, job: str) -> str:
    """``xraysynth:<kind>:<job>``; kind is queued, reserved, lease, starts, suspect or once."""
    return f"{PREFIX}{kind}:{job}"


@lru_cache
def _client(pid: int) -> redis.Redis:  # one client per process: connections must not cross a fork
    return redis.Redis.from_url(get_settings().broker_url, socket_timeout=5, socket_connect_timeout=5)


def client() -> redis.Redis:
    return _client(os.getpid())


def shard_job(dataset_id, index: int) -> str:
    return f"shard:{dataset_id}:{index}"


def plan_job(dataset_id) -> str:
    return f"plan:{dataset_id}"


def finalise_job(dataset_id) -> str:
    return f"finalise:{dataset_id}"


def job_of_task(task_name: str, args) -> str | None:
    """The job a task message is for (None for tasks nobody tracks, such as a manual sweep)."""
    try:
        if task_name == queue.GENERATE_SHARD:
            return shard_job(args[0], int(args[1]))
        if task_name == queue.PLAN_DATASET:
            return plan_job(args[0])
        if task_name == queue.FINALISE_DATASET:
            return finalise_job(args[0])
    except (IndexError, TypeError, ValueError):
        return None  # a malformed message: the task itself will refuse it
    return None


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# -- queued markers ---------------------------------------------------------------------------

def mark_queued(*jobs: str) -> None:
    if not jobs:
        return
    pipe = client().pipeline(transaction=False)
    for job in jobs:
        # Outlives any message the broker still holds: redelivery of an unacked message takes this long.
        pipe.set(key("queued", job), "1", ex=VISIBILITY_TIMEOUT_S)
    pipe.execute()


def clear_queued(*jobs: str) -> None:
    if jobs:
        client().delete(*[key("queued", j) for j in jobs])


def _flags(kind: str, jobs: list[str]) -> list[bool]:
    if not jobs:
        return []
    return [v is not None for v in client().mget([key(kind, j) for j in jobs])]


def leased(jobs: list[str]) -> list[bool]:
    return _flags("lease", jobs)


def reserved(jobs: list[str]) -> list[bool]:
    return _flags("reserved", jobs)


def in_flight(jobs: list[str]) -> list[bool]:
    """Queued, reserved or leased, read in one MGET: a job moving from one to the next between two reads
    could otherwise be seen in none."""
    if not jobs:
        return []
    kinds = ("queued", "reserved", "lease")
    values = client().mget([key(kind, j) for j in jobs for kind in kinds])
    return [any(v is not None for v in values[i * 3:i * 3 + 3]) for i in range(len(jobs))]


# -- reservations -----------------------------------------------------------------------------

class Reservations:
    """The jobs this worker took from the broker and has not started (prefork holds them in the main
    process until a child is free). Each is a key with a TTL that a daemon thread refreshes; starting
    the task deletes the key (``Lease.acquire``), and the thread then forgets the job."""

    def __init__(self, ttl_s: float | None = None):
        self.ttl_ms = int(1000 * (ttl_s or worker_settings().lease_ttl_s))
        self.owner = owner_id()
        self._jobs: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def take(self, job: str) -> None:
        reservation = key("reserved", job)
        pipe = client().pipeline(transaction=True)
        pipe.set(reservation, self.owner, px=self.ttl_ms)
        pipe.delete(key("queued", job))
        pipe.execute()
        with self._lock:
            self._jobs.add(reservation)
            if self._thread is None:
                self._thread = threading.Thread(target=self._refresh, name="reservations", daemon=True)
                self._thread.start()

    def _refresh(self) -> None:
        while True:
            time.sleep(self.ttl_ms / 3000)
            with self._lock:
                keys = list(self._jobs)
            if not keys:
                continue
            try:
                pipe = client().pipeline(transaction=False)
                for k in keys:
                    pipe.pexpire(k, self.ttl_ms)  # never recreates a key a started task deleted
                gone = [k for k, alive in zip(keys, pipe.execute()) if not alive]
            except redis.RedisError:
                continue  # the broker blinked; try again next tick
            with self._lock:
                self._jobs.difference_update(gone)


# -- leases -----------------------------------------------------------------------------------


def count_start(job: str) -> int:
    counter = key("starts", job)
    pipe = client().pipeline()
    pipe.incr(counter)
    pipe.expire(counter, STARTS_TTL_S)
    return int(pipe.execute()[0])


def starts(jobs: list[str]) -> list[int]:
    if not jobs:
        return []
    return [int(v or 0) for v in client().mget([key("starts", j) for j in jobs])]


def reset_starts(*jobs: str) -> None:
    if jobs:
        client().delete(*[key("starts", j) for j in jobs])


class Lease:
    """``with Lease(job) as lease: if lease.held: ...`` — refreshed in a daemon thread while held."""

    def __init__(self, job: str, ttl_s: float | None = None):
        self.job = job
        self.key = key("lease", job)
        self.ttl_ms = int(1000 * (ttl_s or worker_settings().lease_ttl_s))
        self.owner = owner_id()
        self.held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        """Take the lease and, in the same transaction, the job's queued marker and reservation away:
        whether or not this worker gets the lease, the message in hand is no longer waiting."""
        pipe = client().pipeline(transaction=True)
        pipe.set(self.key, self.owner, nx=True, px=self.ttl_ms)
        pipe.delete(key("queued", self.job), key("reserved", self.job))
        self.held = bool(pipe.execute()[0])
        if self.held:
            self._thread = threading.Thread(target=self._refresh, name=f"lease-{self.job}", daemon=True)
            self._thread.start()
        return self.held

    def _refresh(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            try:
                if not client().eval(_REFRESH, 1, self.key, self.owner, self.ttl_ms):
                    return  # lost it (expired during a long pause); the DB commit still decides
            except redis.RedisError:
                pass  # the broker blinked; try again next tick

    def release(self) -> None:
        self._stop.set()
        if self.held:
            try:
                client().eval(_RELEASE, 1, self.key, self.owner)
            except redis.RedisError:
                pass  # it expires on its own
        self.held = False

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _suspect(jobs: list[str], interval_s: float, *, only_new: bool) -> list[bool]:
    """Mark jobs suspected lost, for a little over two sweeps; True for each that was not already."""
    pipe = client().pipeline(transaction=False)
    for job in jobs:
        pipe.set(key("suspect", job), "1", nx=only_new, px=int(2500 * interval_s))
    return [bool(v) for v in pipe.execute()]


def confirm_lost(jobs: list[str], interval_s: float) -> list[str]:
    """The jobs that were already suspected lost at the previous sweep; the others become suspects."""
    if not jobs:
        return []
    fresh = _suspect(jobs, interval_s, only_new=True)
    confirmed = [job for job, new in zip(jobs, fresh) if not new]
    if confirmed:
        client().delete(*[key("suspect", j) for j in confirmed])
    return confirmed


def _dead_here(owner: str, host: str) -> bool:
    """True only for a holder that was a process of this machine and is gone (``owner_id`` format)."""
    owner_host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if owner_host != host or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, someone else's
    return False  # alive (or a reused pid: then the TTL decides, as for any other machine)


def release_dead_holders(interval_s: float) -> list[str]:
    """Leases and reservations held by processes of this machine that have died (a worker killed and
    started again on the same box): released now instead of at their TTL, and marked suspect so the sweep
    that finds them re-sends their jobs without waiting for a second look."""
    host, dead = socket.gethostname(), []
    for kind in ("lease", "reserved"):
        prefix = key(kind, "")
        keys = list(client().scan_iter(match=prefix + "*", count=500))
        for k, owner in zip(keys, client().mget(keys) if keys else []):
            if owner is not None and _dead_here(owner.decode(), host) and client().eval(_RELEASE, 1, k, owner):
                dead.append(k.decode()[len(prefix):])
    if dead:
        _suspect(dead, interval_s, only_new=False)
    return dead


def try_singleton(name: str, ttl_s: float) -> bool:
    """At most one holder per ttl across all workers (the sweeper runs once per interval, cluster-wide)."""
    return bool(client().set(key("once", name), owner_id(), nx=True, px=int(ttl_s * 1000)))
