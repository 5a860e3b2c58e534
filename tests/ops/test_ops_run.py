"""`xraysynth run` end to end: starts on a free port with a fresh var dir, serves an authenticated
request with the key it printed, and on SIGINT stops every process it started."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.embedded import free_port, port_open

KEY = re.compile(r"xs_[A-Za-z0-9_-]{43}")
CLI = [sys.executable, "-c", "from cli import app; app(prog_name='xraysynth')"]


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def descendants(pid: int) -> set[int]:
    tree, out, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its parent's bookkeeping is left


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XRAYSYNTH_")}
    env.update({"COLUMNS": "250", "PYTHONUNBUFFERED": "1", **extra})
    return env


class Run:
    def __init__(self, var_dir: Path, env: dict[str, str], *extra: str):
        self.port = free_port()
        self.log = open(var_dir.parent / f"run-{self.port}.out", "w+")
        self.proc = subprocess.Popen(
            [*CLI, "run", "--port", str(self.port), "--var-dir", str(var_dir), "--no-bootstrap", *extra],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=var_dir.parent,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"run exited early:\n{self.output()}"
            if "Ctrl-C stops everything" in self.output():
                assert httpx.get(self.url + "/v1/health", timeout=5).status_code == 200
                return
            time.sleep(0.3)
        raise AssertionError(f"not ready in {timeout}s:\n{self.output()}")

    def stop(self) -> set[int]:
        """SIGINT (what Ctrl-C sends); return the processes it had started, for the caller to check."""
        started = descendants(self.proc.pid)
        assert started, "run started no processes?"
        self.proc.send_signal(signal.SIGINT)
        try:
            rc = self.proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        assert rc == 0, self.output()
        return started

    def kill(self) -> None:
        for pid in descendants(self.proc.pid) | {self.proc.pid}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def assert_all_gone(pids: set[int], port: int) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(running(p) for p in pids):
        time.sleep(0.1)
    left = [Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode() for p in pids if running(p)]
    assert not left, f"still running after stop: {left}"
    assert not port_open("127.0.0.1", port)


@pytest.fixture
def fresh(tmp_path):
    return tmp_path / "var"


def test_run_embedded_fallbacks_serve_and_stop_cleanly(fresh):
    run = Run(fresh, clean_env(XRAYSYNTH_ENVIRONMENT="development"), "--embedded")
    try:
        run.wait_ready()
        out = run.output()
        assert "embedded SQLite" in out and "embedded redis-server" in out and "embedded SeaweedFS" in out
        assert "1 Celery worker" in out
        keys = json.loads((fresh / "run-keys.json").read_text())
        assert (fresh / "run-keys.json").stat().st_mode & 0o077 == 0
        assert (fresh / "secrets.json").stat().st_mode & 0o077 == 0
        researcher, admin = keys["researcher"]["key"], keys["admin"]["key"]
        assert researcher in out and admin in out  # the summary shows both
        r = httpx.get(run.url + "/v1/conditions", headers={"Authorization": f"Bearer {researcher}"}, timeout=10)
        assert r.status_code == 200, r.text
        assert httpx.get(run.url + "/v1/reviews?status=pending", headers={"Authorization": f"Bearer {admin}"},
                         timeout=10).status_code == 200
        started = run.stop()
    except BaseException:
        run.kill()
        raise
    assert_all_gone(started, run.port)
    assert len(started) >= 4  # SeaweedFS, redis-server, the API, the worker

    # A second run reuses the generated credentials and the keys; this one on the folder broker (what
    # a box without redis-server gets): the API works, and no worker is started without Redis.
    secrets_before = (fresh / "secrets.json").read_text()
    env = clean_env(XRAYSYNTH_ENVIRONMENT="development", XRAYSYNTH_BROKER_URL="filesystem://")
    again = Run(fresh, env, "--embedded")
    try:
        again.wait_ready()
        assert "the worker needs Redis" in again.output()
        assert (fresh / "secrets.json").read_text() == secrets_before
        assert json.loads((fresh / "run-keys.json").read_text())["researcher"]["key"] == researcher
        r = httpx.get(again.url + "/v1/conditions", headers={"Authorization": f"Bearer {researcher}"}, timeout=10)
        assert r.status_code == 200
        started = again.stop()
    except BaseException:
        again.kill()
        raise
    assert_all_gone(started, again.port)


def test_run_on_configured_postgres_and_redis(clean, fresh):
    """With XRAYSYNTH_DATABASE_URL/BROKER_URL set (here: the test database and Redis), run uses them;
    outside development it shows each key once and keeps no plain key on disk."""
    run = Run(fresh, clean_env(**clean.env), "--no-worker")
    try:
        run.wait_ready()
        out = run.output()
        assert "configured (XRAYSYNTH_DATABASE_URL)" in out and "configured (XRAYSYNTH_BROKER_URL" in out
        assert not (fresh / "run-keys.json").exists()
        admin, researcher = KEY.findall(out)[:2]
        r = httpx.get(run.url + "/v1/conditions", headers={"Authorization": f"Bearer {researcher}"}, timeout=10)
        assert r.status_code == 200, r.text
        started = run.stop()
    except BaseException:
        run.kill()
        raise
    assert_all_gone(started, run.port)
