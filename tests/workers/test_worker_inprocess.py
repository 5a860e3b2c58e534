"""The pipeline's steps called in-process (no Celery): the release gate in finalise, the sweeper, and the
reservation a worker holds on a message it has taken but not started."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update


@pytest.fixture
def worker_env(monkeypatch):
    from service.settings import get_settings
    from workers.config import worker_settings

    for k, v in {"XRAYSYNTH_SHARD_SIZE": "4", "XRAYSYNTH_ENCODE_PROCESSES": "0", "XRAYSYNTH_CPU_BATCH_SIZE": "4",
                 "XRAYSYNTH_SWEEP_INTERVAL_S": "1"}.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    worker_settings.cache_clear()
    yield
    get_settings.cache_clear()
    worker_settings.cache_clear()


def make_dataset(*, account_id, model_version_id, spec, seed, status="approved", fmt="png"):
    from service.datasets.models import Dataset, DatasetStatus, ImageFormat
    from service.db import session_scope

    with session_scope() as s:
        ds = Dataset(account_id=account_id, model_version_id=model_version_id, spec=spec,
                     total_images=sum(spec.values()), format=ImageFormat(fmt), heatmaps=True, seed=seed,
                     purpose="testing the worker pipeline in process", status=DatasetStatus(status), done_images=0)
        s.add(ds)
        s.flush()
        return ds.id


def status(ds_id):
    from service.datasets.models import Dataset
    from service.db import session_scope

    with session_scope() as s:
        ds = s.get(Dataset, ds_id)
        return ds.status.value, ds.error


def test_finalise_refuses_images_the_filter_did_not_score(model_version, researcher, worker_env):
    from service.audit.service import Actor
    from service.datasets.models import Dataset, DatasetStatus, SyntheticImage
    from service.datasets.transitions import transition
    from service.db import session_scope
    from workers import finalise, plan, shard

    ds_id = make_dataset(account_id=researcher.id, model_version_id=model_version.id, spec={"Mass": 6}, seed=5)
    assert plan.plan_dataset(ds_id) == "planned"
    assert [shard.run_shard(ds_id, i) for i in (0, 1)] == ["recorded", "recorded"]
    assert shard.run_shard(ds_id, 0) == "already_done"  # a duplicate message changes nothing
    with session_scope() as s:
        s.execute(update(SyntheticImage).where(SyntheticImage.dataset_id == ds_id, SyntheticImage.index == 4)
                  .values(nn_distance=None))
    assert finalise.finalise_dataset(ds_id) == "failed"
    st, error = status(ds_id)
    assert st == "failed" and "no memorisation-filter score" in error

    # An admin retry with every shard already done goes straight to finalise (which re-checks).
    with session_scope() as s:
        s.execute(update(SyntheticImage).where(SyntheticImage.dataset_id == ds_id, SyntheticImage.index == 4)
                  .values(nn_distance=1.0))
        transition(s, s.get(Dataset, ds_id), DatasetStatus.approved, actor=Actor(None, "admin", "admin"))
    assert plan.plan_dataset(ds_id) == "planned"
    assert finalise.finalise_dataset(ds_id) == "ready"
    assert status(ds_id) == ("ready", None)


def test_model_without_privacy_index_cannot_generate(model_version, researcher, worker_env):
    from service.db import session_scope
    from service.modelversions.models import ModelVersion
    from workers import plan

    with session_scope() as s:
        s.execute(update(ModelVersion).where(ModelVersion.id == model_version.id).values(privacy_index_key=None))
    ds_id = make_dataset(account_id=researcher.id, model_version_id=model_version.id, spec={"Mass": 2}, seed=1)
    assert plan.plan_dataset(ds_id) == "failed"
    st, error = status(ds_id)
    assert st == "failed" and "privacy index" in error


def test_sweeper_requeues_lost_work_and_fails_stale_datasets(model_version, researcher, worker_env):
    import redis

    from service.datasets.models import Dataset, DatasetStatus, Shard, ShardStatus
    from service.db import session_scope
    from service.settings import get_settings
    from service.timeutil import utcnow
    from workers import leases
    from workers.sweeper import sweep

    r = redis.Redis.from_url(get_settings().broker_url)
    now = utcnow()
    lost = make_dataset(account_id=researcher.id, model_version_id=model_version.id, spec={"Mass": 8}, seed=1,
                        status="generating")
    stale = make_dataset(account_id=researcher.id, model_version_id=model_version.id, spec={"Mass": 8}, seed=2,
                         status="generating")
    unplanned = make_dataset(account_id=researcher.id, model_version_id=model_version.id, spec={"Mass": 8}, seed=3)
    crashy = make_dataset(account_id=researcher.id, model_version_id=model_version.id, spec={"Mass": 4}, seed=4,
                          status="generating")
    with session_scope() as s:
        for ds_id, n in ((lost, 2), (stale, 2), (crashy, 1)):
            for k in range(n):
                s.add(Shard(dataset_id=ds_id, index=k, start=4 * k, stop=4 * k + 4, seed_base=1,
                            object_key=f"datasets/{ds_id}/shards/shard-{k:05d}.tar", status=ShardStatus.pending))
        s.execute(update(Dataset).where(Dataset.id == lost).values(heartbeat_at=now))
        s.execute(update(Dataset).where(Dataset.id == crashy).values(heartbeat_at=now))
        s.execute(update(Dataset).where(Dataset.id == stale).values(heartbeat_at=now - timedelta(hours=2),
                                                                    updated_at=now - timedelta(hours=2)))
        s.execute(update(Dataset).where(Dataset.id == unplanned).values(updated_at=now - timedelta(minutes=5)))
    leases.Lease(leases.shard_job(lost, 1), ttl_s=30).acquire()  # shard 1 is being worked on
    for _ in range(leases_starts := 4):
        leases.count_start(leases.shard_job(crashy, 0))

    first = sweep(force=True)
    assert first.planned == [str(unplanned)]
    assert first.failed == [str(stale)]  # two hours without a sign of life and nothing queued or running
    assert first.requeued_shards == []  # a job is only lost if two sweeps in a row find it so
    second = sweep(force=True)
    assert second.requeued_shards == [(str(lost), 0)]
    assert second.failed == [str(crashy)]
    assert r.llen("generation") == 2  # one plan, one shard
    third = sweep(force=True)
    assert third.requeued_shards == [] and third.planned == []  # queued now: nothing is sent twice
    assert "no progress" in status(stale)[1]
    assert f"started {leases_starts} times" in status(crashy)[1]
    with session_scope() as s:
        assert s.get(Dataset, lost).status == DatasetStatus.generating


def test_a_shard_in_hand_shows_how_far_it_is_in_the_progress_note(model_version, researcher, worker_env, monkeypatch):
    # Progress moves a whole shard at a time: on a CPU box a 1,500-image request sat at 0 / 1500 for the
    # 46 s of its first shard. The note says how far the shard in hand is; done stays at recorded shards.
    import threading
    import time

    from service.datasets.models import Dataset
    from service.db import session_scope
    from workers import plan, shard

    monkeypatch.setenv("XRAYSYNTH_SHARD_SIZE", "12")
    monkeypatch.setenv("XRAYSYNTH_BATCH_PAUSE_S", "0.3")
    from service.settings import get_settings
    from workers.config import worker_settings

    get_settings.cache_clear()
    worker_settings.cache_clear()
    monkeypatch.setattr(shard, "CHECK_STATUS_EVERY_S", 0.0)
    ds_id = make_dataset(account_id=researcher.id, model_version_id=model_version.id, spec={"Mass": 12}, seed=3)
    assert plan.plan_dataset(ds_id) == "planned"
    seen, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            with session_scope() as s:
                ds = s.get(Dataset, ds_id)
                seen.append((ds.done_images, ds.progress_note))
            time.sleep(0.05)

    t = threading.Thread(target=watch)
    t.start()
    try:
        assert shard.run_shard(ds_id, 0) == "recorded"
    finally:
        stop.set()
        t.join()
    notes = [n for _, n in seen if n]
    assert "images 1-12: 4 of 12 generated" in notes and "images 1-12: 8 of 12 generated" in notes, seen
    assert all(done == 0 for done, n in seen if n)  # the count itself moves only when the shard is recorded
    with session_scope() as s:
        ds = s.get(Dataset, ds_id)
        assert (ds.done_images, ds.progress_note) == (12, None)


def test_a_reservation_lives_while_its_worker_does_and_ends_when_the_task_starts(model_version, researcher, worker_env):
    import time

    from service.datasets.models import Dataset, Shard, ShardStatus
    from service.db import session_scope
    from service.timeutil import utcnow
    from workers import leases
    from workers.sweeper import sweep

    ds = make_dataset(account_id=researcher.id, model_version_id=model_version.id, spec={"Mass": 4}, seed=5,
                      status="generating")
    with session_scope() as s:
        s.add(Shard(dataset_id=ds, index=0, start=0, stop=4, seed_base=1,
                    object_key=f"datasets/{ds}/shards/shard-00000.tar", status=ShardStatus.pending))
        s.execute(update(Dataset).where(Dataset.id == ds).values(heartbeat_at=utcnow()))
    job = leases.shard_job(ds, 0)

    def requeued_after_two_sweeps() -> bool:
        reports = [sweep(force=True), sweep(force=True)]
        return any((str(ds), 0) in r.requeued_shards for r in reports)

    leases.mark_queued(job)
    leases.Reservations(ttl_s=0.6).take(job)  # the message is in a worker's hands, not yet started
    time.sleep(1.5)  # well past the TTL: the worker's thread keeps it
    assert leases.reserved([job]) == [True]
    assert not requeued_after_two_sweeps()

    lease = leases.Lease(job, ttl_s=30)
    assert lease.acquire()
    assert leases.reserved([job]) == [False]  # handed over to the lease in one transaction
    lease.release()
    time.sleep(0.5)  # a refresh tick: it must not bring the reservation back
    assert leases.in_flight([job]) == [False]
    assert requeued_after_two_sweeps()  # the task ended without recording the shard: lost, sent again


def test_work_held_by_a_dead_process_of_this_machine_is_sent_again_in_one_sweep(model_version, researcher,
                                                                                 worker_env):
    import os
    import subprocess
    import sys

    from service.datasets.models import Dataset, Shard, ShardStatus
    from service.db import session_scope
    from service.timeutil import utcnow
    from workers import leases
    from workers.sweeper import sweep

    ds = make_dataset(account_id=researcher.id, model_version_id=model_version.id, spec={"Mass": 12}, seed=6,
                      status="generating")
    with session_scope() as s:
        for k in range(3):
            s.add(Shard(dataset_id=ds, index=k, start=4 * k, stop=4 * k + 4, seed_base=1,
                        object_key=f"datasets/{ds}/shards/shard-{k:05d}.tar", status=ShardStatus.pending))
        s.execute(update(Dataset).where(Dataset.id == ds).values(heartbeat_at=utcnow()))
    dead, alive, elsewhere = (leases.shard_job(ds, k) for k in range(3))
    # Shard 0: a worker process on this machine took its lease (a minute long) and was killed.
    code = (f"from workers import leases; lease = leases.Lease({dead!r}, ttl_s=60); assert lease.acquire(); "
            "import os; os.kill(os.getpid(), 9)")
    proc = subprocess.run([sys.executable, "-c", code], env=os.environ.copy(), capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    # Shard 1: held by a live process (this one). Shard 2: held on another machine (its TTL decides).
    assert leases.Lease(alive, ttl_s=60).acquire()
    leases.client().set(leases.key("lease", elsewhere), "another-host:1:abcd1234", px=60_000)

    report = sweep(force=True)
    assert dead in report.released and alive not in report.released and elsewhere not in report.released
    # Sent again at once, not after the lease's minute; the others are left alone.
    assert [s for s in report.requeued_shards if s[0] == str(ds)] == [(str(ds), 0)]
    assert leases.leased([alive, elsewhere]) == [True, True]
