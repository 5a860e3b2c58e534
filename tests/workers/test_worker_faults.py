"""Faults beside the kill -9 and S3 ones, with real worker processes: Redis restarted mid-dataset
(empty: queue, leases and markers gone) and PostgreSQL stopped and started mid-dataset both end with
the dataset complete, byte-identical to an undisturbed twin, with no duplicate provenance rows;
while PostgreSQL is down the API says so with 503s. A killed worker drops out of /v1/health.

The PostgreSQL test runs its own throwaway cluster (initdb + pg_ctl on a free port): the machine's
cluster serves every other test session and must never be stopped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from service.embedded import free_port
from tests.conftest import _reset_service_caches, _truncate_all
from tests.workers.conftest import (
    PLANT_SEED,
    PLANT_SPEC,
    approve,
    get_dataset,
    provenance,
    request_dataset,
    shard_hashes,
    wait_for,
    wait_status,
)
from tests.workers.test_worker_resilience import SLOW, done_images

FAST_BEAT = {"XRAYSYNTH_WORKER_HEARTBEAT_S": "0.5"}


def assert_same_as_twin(dataset_id: str, twin_id: str) -> None:
    assert shard_hashes(dataset_id) == shard_hashes(twin_id) and len(shard_hashes(twin_id)) == 3
    rows = provenance(dataset_id)
    assert len(rows) == 24 and len({r.index for r in rows}) == 24  # no duplicates, none missing
    assert [tuple(r) for r in rows] == [tuple(r) for r in provenance(twin_id)]


def make_twin(api, researcher, admin, workers) -> str:
    twin = request_dataset(api, researcher, PLANT_SPEC, PLANT_SEED)
    approve(api, admin, twin)
    wait_status(api, researcher, twin, "ready", timeout=90, workers=workers)
    return twin


def test_a_killed_worker_drops_out_of_health(model_version, api, start_worker, monkeypatch):
    monkeypatch.setenv("XRAYSYNTH_WORKER_HEARTBEAT_S", "0.5")  # the API's reading of the same setting
    _reset_service_caches()
    worker = start_worker(**FAST_BEAT)
    wait_for(lambda: api.get("/v1/health").json()["worker"] == "ok", 60, "the worker to report", [worker])
    worker.kill9()
    # Three missed reports (1.5 s) and it is gone; the API itself stays up (200).
    body = wait_for(lambda: (r := api.get("/v1/health")).json()["worker"] != "ok" and r, 10,
                    "health to notice the dead worker")
    assert body.status_code == 200 and body.json()["status"] == "degraded"
    assert body.json()["worker"].startswith("unavailable (no worker has reported for"), body.json()


def test_redis_restarted_mid_dataset_the_dataset_completes(model_version, researcher, admin, api, infra,
                                                          start_worker):
    worker = start_worker(**SLOW)
    twin = make_twin(api, researcher, admin, [worker])

    victim = request_dataset(api, researcher, PLANT_SPEC, PLANT_SEED)
    approve(api, admin, victim)
    wait_for(lambda: done_images(victim) >= 8, 60, "the first shard", [worker])
    infra.redis.restart()  # not persisted: queued messages, leases and markers are all gone
    assert done_images(victim) < 24, "the dataset finished before Redis went away"

    wait_status(api, researcher, victim, "ready", timeout=90, workers=[worker])
    assert worker.alive(), worker.tail()
    assert_same_as_twin(victim, twin)


# -- PostgreSQL on a cluster of its own -----------------------------------------------------------

def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if not initdb:
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found; install postgresql")
    return Path(initdb).parent


@dataclass
class OwnPostgres:
    bin: Path
    data: Path
    port: int
    as_user: list[str]

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/xraysynth"

    def ctl(self, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data / "db"), "-l",
                        str(self.data / "pg.log"), "-w", "-t", "60", *args],
                       check=True, capture_output=True, timeout=90)

    def start(self) -> None:
        self.ctl("-o", f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off "
                       "-c full_page_writes=off -c synchronous_commit=off", "start")

    def stop(self) -> None:
        self.ctl("-m", "fast", "stop")  # what `systemctl stop postgresql` does: every connection cut


@pytest.fixture(scope="module")
def own_postgres():
    # initdb refuses to run as root: there, the cluster belongs to the postgres user.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data = Path(tempfile.mkdtemp(prefix="xraysynth-pg-"))
    data.chmod(0o755)
    if as_user:
        shutil.chown(data, "postgres")
    pg = OwnPostgres(_pg_bin(), data, free_port(), as_user)
    subprocess.run([*as_user, str(pg.bin / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "postgres",
                    "--no-sync"], check=True, capture_output=True, timeout=120)
    pg.start()
    try:
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{pg.port}/postgres", autocommit=True) as conn:
            conn.execute('CREATE DATABASE "xraysynth"')
        from service.migrate import upgrade

        upgrade(pg.url)
        yield pg
    finally:
        try:
            pg.ctl("-m", "immediate", "stop")
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(data, ignore_errors=True)


class TestPostgresOutage:
    @pytest.fixture
    def clean(self, clean, own_postgres):
        """This class's API, fixtures and workers on the throwaway cluster, empty tables; the session's
        database again afterwards."""
        saved = os.environ["XRAYSYNTH_DATABASE_URL"]
        os.environ["XRAYSYNTH_DATABASE_URL"] = own_postgres.url
        _reset_service_caches()
        _truncate_all()
        try:
            yield clean
        finally:
            os.environ["XRAYSYNTH_DATABASE_URL"] = saved
            _reset_service_caches()

    def test_status_reads_answer_again_within_seconds_of_the_database_coming_back(
            self, model_version, researcher, api, own_postgres):
        # The reads' pool backed off exponentially while the database was down: after 20 s its next
        # attempt came ~10 s after the restart, and reads answered 503 all that while.
        ds = request_dataset(api, researcher, {"Mass": 2}, 1)
        assert api.get(f"/v1/datasets/{ds}", headers=researcher.headers).status_code == 200
        own_postgres.stop()
        try:
            down_until = time.monotonic() + 20
            while time.monotonic() < down_until:
                assert api.get(f"/v1/datasets/{ds}", headers=researcher.headers).status_code == 503
                time.sleep(1)
        finally:
            own_postgres.start()
        back = time.monotonic()
        r = api.get(f"/v1/datasets/{ds}", headers=researcher.headers)
        assert r.status_code == 200, r.text
        assert time.monotonic() - back < 3

    def test_postgres_stopped_and_started_mid_dataset_503s_meanwhile_then_completes(
            self, model_version, researcher, admin, api, own_postgres, start_worker):
        worker = start_worker(XRAYSYNTH_DATABASE_URL=own_postgres.url, **SLOW)
        twin = make_twin(api, researcher, admin, [worker])

        victim = request_dataset(api, researcher, PLANT_SPEC, PLANT_SEED)
        approve(api, admin, victim)
        wait_for(lambda: done_images(victim) >= 8, 60, "the first shard", [worker])
        own_postgres.stop()
        try:
            down_since = time.monotonic()
            health = api.get("/v1/health")
            assert health.status_code == 503, health.text
            assert health.json()["db"].startswith("unavailable"), health.json()
            assert health.json()["broker"] == health.json()["storage"] == "ok"
            # An ordinary route says the same to its client: 503, the error shape, when to come back.
            r = api.get(f"/v1/datasets/{victim}", headers=researcher.headers)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "database_unavailable"
            assert int(r.headers["Retry-After"]) > 0
            time.sleep(max(0.0, 8 - (time.monotonic() - down_since)))  # the worker meets the outage
        finally:
            own_postgres.start()
        assert get_dataset(api, researcher, victim)["status"] in ("generating", "approved")
        wait_status(api, researcher, victim, "ready", timeout=120, workers=[worker])
        assert worker.alive(), worker.tail()
        assert_same_as_twin(victim, twin)
