"""`xraysynth migrate` up and down, and `xraysynth serve` answering, on a scratch SQLite database."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import httpx

from service.embedded import free_port

CLI = [sys.executable, "-c", "from cli import app; app(prog_name='xraysynth')"]


def scratch_env(tmp_path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XRAYSYNTH_")}
    env.update({"XRAYSYNTH_ENVIRONMENT": "development", "XRAYSYNTH_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
                "COLUMNS": "200", **extra})
    return env


def tables(tmp_path) -> set[str]:
    with sqlite3.connect(tmp_path / "x.db") as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_migrate_up_and_down(tmp_path):
    env = scratch_env(tmp_path)
    up = subprocess.run([*CLI, "migrate"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    assert "is at revision" in up.stdout and "is at revision base" not in up.stdout
    assert {"accounts", "api_keys", "audit_events", "model_versions", "datasets"} <= tables(tmp_path)

    down = subprocess.run([*CLI, "migrate", "--downgrade-to", "base"], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert "is at revision base" in down.stdout
    assert tables(tmp_path) <= {"alembic_version"}


def test_serve_answers(tmp_path):
    env = scratch_env(tmp_path, XRAYSYNTH_BROKER_URL="filesystem://", XRAYSYNTH_BROKER_FOLDER=str(tmp_path / "b"),
                      XRAYSYNTH_RATE_LIMIT_STORAGE_URL="memory://", XRAYSYNTH_S3_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}")
    subprocess.run([*CLI, "migrate"], env=env, check=True, capture_output=True, timeout=120, cwd=tmp_path)
    port = free_port()
    proc = subprocess.Popen([*CLI, "serve", "--port", str(port)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else "timeout"
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=10)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        # no S3 store here: the health check must say which part is down, and the rest is fine
        assert r.status_code == 503
        body = r.json()
        assert body["db"] == "ok" and body["storage"].startswith("unavailable")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
