"""The one-box service (`xraysynth run`) as a user with two shells meets it, and as an out-of-memory
kill would: a key made by `xraysynth keys create` in another shell works against the running service
(every command reads the settings the service runs with), a command that cannot know the service's
pepper refuses instead of printing a dead key, and a worker killed with SIGKILL is restarted by the
supervisor while the API and S3 keep answering, and the dataset it was making completes unchanged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.ops.test_ops_run import CLI, KEY, Run, assert_all_gone, clean_env, descendants
from tests.workers import conftest as worker_fixtures
from tests.workers.conftest import PLANT_SEED, PLANT_SPEC, WORKER_ENV, provenance, shard_hashes

toy_model = worker_fixtures.toy_model  # the worker tests' toy model (a session fixture), used here too

SLOW = {"XRAYSYNTH_BATCH_PAUSE_S": "0.4"}  # ≥ 0.8 s a shard: the kill lands mid-dataset


def xraysynth(cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 180):
    """A separate `xraysynth` process, as started from another shell (no XRAYSYNTH_* in its environment
    unless given): it finds the service's settings the way any command does."""
    return subprocess.run([*CLI, *args], check=False, cwd=cwd, env=env or clean_env(), capture_output=True, text=True,
                          timeout=timeout)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def fresh(tmp_path):
    return tmp_path / "var"


def test_a_key_made_in_another_shell_works_against_the_running_service(fresh):
    run = Run(fresh, clean_env(XRAYSYNTH_ENVIRONMENT="development"), "--embedded", "--no-worker")
    try:
        run.wait_ready()
        assert "commands started here read the same settings" in run.output()
        checkout = fresh.parent

        made = xraysynth(checkout, "keys", "create", "--role", "researcher", "--name", "alice", "--plain")
        assert made.returncode == 0, made.stderr
        alice = made.stdout.strip()
        assert KEY.fullmatch(alice), made.stdout
        r = httpx.get(run.url + "/v1/conditions", headers=bearer(alice), timeout=10)
        assert r.status_code == 200, r.text

        # From a directory with no var dir the command cannot know the pepper: it refuses, names what to
        # set, and prints no key.
        elsewhere = checkout / "elsewhere"
        elsewhere.mkdir()
        refused = xraysynth(elsewhere, "keys", "create", "--role", "researcher", "--name", "bob")
        assert refused.returncode == 2, refused.stdout + refused.stderr
        said = " ".join((refused.stdout + refused.stderr).split())
        assert "XRAYSYNTH_API_KEY_PEPPER" in said and "XRAYSYNTH_VAR_DIR" in said, said
        assert not KEY.search(said)

        # The same place, pointed at the var dir: an admin key that the service accepts on an admin route.
        pointed = xraysynth(elsewhere, "keys", "create", "--role", "admin", "--name", "carol", "--plain",
                            env=clean_env(XRAYSYNTH_VAR_DIR=str(fresh)))
        assert pointed.returncode == 0, pointed.stderr
        r = httpx.get(run.url + "/v1/audit", headers=bearer(pointed.stdout.strip()), timeout=10)
        assert r.status_code == 200, r.text

        listed = xraysynth(checkout, "keys", "list")
        assert listed.returncode == 0, listed.stderr
        assert "alice" in listed.stdout and "carol" in listed.stdout and "bob" not in listed.stdout
        started = run.stop()
    except BaseException:
        run.kill()
        raise
    assert_all_gone(started, run.port)


# -- the worker killed under the supervisor ---------------------------------------------------------

def _health(url: str) -> dict:
    r = httpx.get(url + "/v1/health", timeout=10)
    assert r.status_code == 200, r.text  # the API itself answers throughout
    return r.json()


def _wait(predicate, timeout: float, what: str, run: Run):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{run.output()[-4000:]}")


def _dataset(run: Run, key: str, dataset_id: str) -> dict:
    r = httpx.get(f"{run.url}/v1/datasets/{dataset_id}", headers=bearer(key), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def _request_and_approve(run: Run, researcher: str, admin: str) -> str:
    r = httpx.post(run.url + "/v1/datasets", headers=bearer(researcher), timeout=10, json={
        "conditions": PLANT_SPEC, "seed": PLANT_SEED, "purpose": "one-box fault test: worker killed mid-dataset"})
    assert r.status_code == 202, r.text
    dataset_id = r.json()["id"]
    r = httpx.post(f"{run.url}/v1/datasets/{dataset_id}/reviews", headers=bearer(admin), timeout=10,
                   json={"decision": "approve", "reason": "fault test: evidence reviewed"})
    assert r.status_code == 200, r.text
    return dataset_id


def _ready(run: Run, key: str, dataset_id: str):
    def check():
        ds = _dataset(run, key, dataset_id)
        assert ds["status"] not in ("failed", "cancelled"), ds
        return ds["status"] == "ready"
    return check


def _worker_pid(run: Run) -> int:
    for pid in descendants(run.proc.pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker" in cmd and b"--pool" in cmd:
            return pid
    raise AssertionError("no worker process under the one-box run")


def test_a_killed_worker_is_restarted_and_its_dataset_completes_byte_identical(clean, fresh, toy_model, tmp_path):
    # The test session's PostgreSQL and Redis, a generated pepper (none given), the toy model's
    # training set for the privacy filter, small shards; the default lease TTL and sweep interval: the
    # restarted worker must take the killed one's shard back without waiting for its lease to lapse.
    given = {k: v for k, v in clean.env.items() if k != "XRAYSYNTH_API_KEY_PEPPER"}
    env = clean_env(**given, **{**WORKER_ENV, "XRAYSYNTH_LEASE_TTL_S": "60", "XRAYSYNTH_SWEEP_INTERVAL_S": "30"},
                    **SLOW, XRAYSYNTH_TRAINSET_DIR=str(toy_model.trainset_dir),
                    XRAYSYNTH_MIN_TRAINING_PATIENTS="1", XRAYSYNTH_WORKER_HEARTBEAT_S="1")
    bundle = tmp_path / "toy-bundle.pt"
    bundle.write_bytes(toy_model.bundle_bytes)
    run = Run(fresh, env)
    try:
        run.wait_ready(timeout=120)
        admin, researcher = KEY.findall(run.output())[:2]
        registered = xraysynth(fresh.parent, "models", "register", str(bundle), "--trainset",
                               str(toy_model.trainset_dir), "--name", "toy-dcgan", "--version", "1", "--publish")
        assert registered.returncode == 0, registered.stdout + registered.stderr
        _wait(lambda: _health(run.url)["worker"] == "ok", 90, "the worker to report", run)

        twin = _request_and_approve(run, researcher, admin)
        _wait(_ready(run, researcher, twin), 90, "the undisturbed twin", run)

        victim = _request_and_approve(run, researcher, admin)
        _wait(lambda: _dataset(run, researcher, victim)["progress"]["done"] >= 8, 60, "the first shard", run)
        pid = _worker_pid(run)
        os.kill(pid, signal.SIGKILL)  # the worker process alone, as the kernel's OOM killer does
        assert _dataset(run, researcher, victim)["progress"]["done"] < 24, "finished before the kill"

        # Meanwhile: the API answers, health names the missing worker and that it is being restarted, S3
        # answers.
        down = _wait(lambda: (h := _health(run.url))["worker"] != "ok" and h, 10, "health to miss the worker", run)
        assert down["status"] == "degraded" and down["db"] == down["storage"] == "ok", down
        assert down["worker"].startswith("unavailable ("), down
        _wait(lambda: "the one-box supervisor restart" in _health(run.url)["worker"], 10,
              "health to say the worker is being restarted", run)
        assert _dataset(run, researcher, victim)["status"] in ("generating", "approved")
        s3 = json.loads((fresh / "settings.json").read_text())["s3_endpoint_url"]
        assert httpx.get(s3, timeout=10).status_code < 500

        _wait(lambda: _health(run.url)["worker"] == "ok", 90, "the restarted worker to report", run)
        assert _worker_pid(run) != pid
        out = " ".join(run.output().split())
        assert f"worker (pid {pid}) killed by SIGKILL" in out and "worker restarted" in out, out[-3000:]
        _wait(_ready(run, researcher, victim), 25, "the victim dataset (well within the killed worker's 60 s lease)",
              run)

        assert shard_hashes(victim) == shard_hashes(twin) and len(shard_hashes(twin)) == 3
        rows = provenance(victim)
        assert len(rows) == 24 and len({r.index for r in rows}) == 24  # no duplicates, none missing
        assert [tuple(r) for r in rows] == [tuple(r) for r in provenance(twin)]
        started = run.stop()
    except BaseException:
        run.kill()
        raise
    assert_all_gone(started, run.port)
