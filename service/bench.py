"""`xraysynth bench api`: the REST API under concurrent load, against a bare FastAPI app on the same box.

Starts the real service the way `xraysynth serve` runs it (uvicorn; one process, or `--api-workers N` as
the API image runs it with 2) on a scratch PostgreSQL
database (created and dropped here), a private Redis and SeaweedFS; seeds a published model version, a
researcher and a few datasets; then drives it with wrk over loopback, each phase bounded in time:

- status: N clients reading one dataset (GET /v1/datasets/{id}), N = 100 by default;
- spread: N clients each reading one of 200 datasets at random (reads that can rarely share a query);
- list:   N clients reading the researcher's list (GET /v1/datasets);
- create: 20 clients requesting datasets (POST /v1/datasets), each request as one of 20 researchers;
- create1: the same from one researcher, whose requests queue for its quota's row lock;
- bare:   N clients against a bare FastAPI app (same uvicorn flags and processes) answering a constant
          JSON body.

Each phase reports req/s, p50, p99 and errors; reads are also given as a ratio to the bare rate, which
means the same on any machine. /v1/health is polled during the read phases: its slowest answer shows
whether the service stalls under load. The per-key rate limit is raised, not switched off, so its cost
is in the figures. The server's CPU time per request (Linux /proc) says how much of a request is
work and how much waiting. Needs `wrk` (Debian: apt-get install wrk).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Self

import httpx
import psycopg
import typer
from fastapi import FastAPI

from service.accounts.models import Role
from service.accounts.service import create_account, create_key
from service.audit.service import SYSTEM
from service.datasets.models import Dataset, DatasetStatus, ImageFormat
from service.db import reset_caches, session_scope
from service.embedded import free_port, start_redis, start_seaweedfs
from service.migrate import upgrade
from service.modelversions.models import ModelStatus, ModelVersion
from service.storage import ensure_buckets
from service.timeutil import utcnow

ROOT = Path(__file__).resolve().parent.parent
PURPOSE = "Load benchmark: measuring the API's throughput and latency under concurrent clients."
SPREAD_DATASETS = 200
CREATORS = 20

_DONE_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def bare_app() -> FastAPI:
    """The yardstick: what FastAPI under this uvicorn answers when the route does nothing."""
    app = FastAPI()

    @app.get("/")
    async def constant() -> dict:
        return {"status": "ok", "service": "bare"}

    return app


def _lua(headers: dict[str, str], method: str = "GET", body: str | None = None) -> str:
    lines = [f'wrk.method = "{method}"']
    for k, v in headers.items():
        lines.append(f'wrk.headers["{k}"] = "{v}"')
    if body is not None:
        lines.append(f"wrk.body = {json.dumps(body)}")
    return "\n".join(lines) + "\n" + _DONE_LUA


def _spread_lua(headers: dict[str, str], paths: list[str]) -> str:
    """Each request reads one of `paths` at random."""
    listed = ", ".join(f'"{p}"' for p in paths)
    return _lua(headers) + (f"paths = {{{listed}}}\n"
                            "request = function() return wrk.format(nil, paths[math.random(#paths)]) end\n")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds so far of a process and its live children (uvicorn's worker processes)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return own + sum(_cpu_s(int(c)) for c in children if Path(f"/proc/{c}").exists())


def run_wrk(url: str, *, clients: int, seconds: int, script: str, workdir: Path, server_pid: int) -> dict:
    path = workdir / f"wrk-{uuid.uuid4().hex[:8]}.lua"
    cpu0 = _cpu_s(server_pid)
    path.write_text(script)
    threads = max(1, min(clients, os.cpu_count() or 1, 4))
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{clients}", f"-d{seconds}s", "--timeout", "10s", "-s", str(path), url],
        check=False, capture_output=True, text=True, timeout=seconds + 60,
    )
    cpu = _cpu_s(server_pid) - cpu0
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no summary (exit {out.returncode}): {out.stdout[-800:]} {out.stderr[-800:]}")
    r = json.loads(line[4:])
    errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    return {"clients": clients, "seconds": seconds, "requests": r["requests"],
            "rate": r["requests"] / (r["duration_us"] / 1e6), "p50_ms": r["p50_us"] / 1000,
            "p99_ms": r["p99_us"] / 1000, "max_ms": r["max_us"] / 1000, "errors": errors,
            "status_errors": r["status"], "timeouts": r["timeout"],
            "server_cpu_ms_per_request": cpu * 1000 / max(1, r["requests"])}


class HealthWatch:
    """Polls /v1/health every second from its own connection: the slowest answer and any non-200."""

    def __init__(self, base: str):
        self.base, self.stop, self.times, self.bad = base, threading.Event(), [], []
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as client:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                try:
                    status = client.get("/v1/health").status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                self.times.append(time.perf_counter() - t0)
                if status != 200:
                    self.bad.append(status)
                self.stop.wait(1.0)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(40)

    def summary(self) -> dict:
        return {"polls": len(self.times), "max_ms": max(self.times, default=0) * 1000, "not_ok": len(self.bad)}


def _uvicorn(target: str, port: int, env: dict, log: Path, *, processes: int, factory: bool = True) -> subprocess.Popen:
    args = [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "--no-access-log", "--workers", str(processes)]
    if factory:
        args.append("--factory")
    return subprocess.Popen(args, env=env, cwd=ROOT, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _seed(n_datasets: int) -> dict:
    """A published model, a researcher with a key and a large quota, and its datasets (in-process)."""

    with session_scope() as s:
        conditions = ["No Finding", "Mass", "Nodule"]
        mv = ModelVersion(name="bench-dcgan", version="1.0", architecture="cdcgan-128", image_size=128,
                          conditions=conditions, checkpoint_key="models/bench/1.0/bundle.pt",
                          checkpoint_sha256="0" * 64, privacy_index_key="models/bench/1.0/index.npz",
                          privacy_index_sha256="1" * 64, training_fingerprint="f" * 64,
                          patients_per_condition={c: 500 for c in conditions}, metrics={}, card={},
                          status=ModelStatus.published, published_at=utcnow())
        s.add(mv)
        account = create_account(s, name="bench-researcher", role=Role.researcher, actor=SYSTEM, image_quota=2**31 - 1)
        _, key = create_key(s, account=account, actor=SYSTEM)
        ids = _datasets(s, account, mv, n_datasets)
        # A second researcher whose clients each poll a different dataset: reads that cannot share a query.
        spread = create_account(s, name="bench-researcher-spread", role=Role.researcher, actor=SYSTEM,
                                image_quota=2**31 - 1)
        _, spread_key = create_key(s, account=spread, actor=SYSTEM)
        spread_ids = _datasets(s, spread, mv, SPREAD_DATASETS)
        # Researchers requesting at once: a researcher's own requests queue for its quota (row lock).
        creators = [create_key(s, actor=SYSTEM, account=create_account(
            s, name=f"bench-creator-{i}", role=Role.researcher, actor=SYSTEM, image_quota=2**31 - 1))[1]
            for i in range(CREATORS)]
    return {"key": key, "dataset_id": str(ids[0]), "spread_key": spread_key,
            "spread_ids": [str(i) for i in spread_ids], "creator_keys": creators}


def _datasets(s, account, mv, n: int) -> list[uuid.UUID]:
    ids = []
    for i in range(n):
        ds = Dataset(account_id=account.id, model_version_id=mv.id, spec={"Mass": 10}, total_images=10,
                     format=ImageFormat.png, heatmaps=True, seed=i, purpose=PURPOSE,
                     status=DatasetStatus.pending_review, done_images=0)
        s.add(ds)
        s.flush()
        ids.append(ds.id)
    return ids


def run_api_bench(*, read_clients: list[int], create_clients: int, seconds: int, create_seconds: int,
                  n_datasets: int, pg_admin_url: str, api_workers: int = 1) -> dict:

    if shutil.which("wrk") is None:
        raise RuntimeError("wrk not found: apt-get install wrk")
    # Stopped from outside (timeout, Ctrl-C in a supervisor): unwind, so the servers started below and
    # the scratch database go too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results: dict = {"phases": [], "api_workers": api_workers}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="xraysynth-bench-api-")))
        redis = start_redis(tmp / "redis")
        stack.callback(redis.stop)
        access, secret = "bench-" + secrets.token_hex(4), secrets.token_urlsafe(24)
        s3 = start_seaweedfs(tmp / "s3", access_key=access, secret_key=secret)
        stack.callback(s3.stop)
        db_name = f"xraysynth_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db_name}"')

        def drop() -> None:
            with psycopg.connect(pg_admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')

        stack.callback(drop)
        base = pg_admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
        env = {
            "XRAYSYNTH_ENVIRONMENT": "test",
            "XRAYSYNTH_DATABASE_URL": f"{base}/{db_name}",
            "XRAYSYNTH_BROKER_URL": f"{redis.endpoint}/0",
            "XRAYSYNTH_RATE_LIMIT_STORAGE_URL": f"{redis.endpoint}/1",
            "XRAYSYNTH_S3_ENDPOINT_URL": s3.endpoint,
            "XRAYSYNTH_S3_ACCESS_KEY_ID": access,
            "XRAYSYNTH_S3_SECRET_ACCESS_KEY": secret,
            "XRAYSYNTH_API_KEY_PEPPER": secrets.token_urlsafe(24),
            "XRAYSYNTH_RATE_LIMIT": "100000000/minute",
        }
        os.environ.update(env)

        reset_caches()
        upgrade(env["XRAYSYNTH_DATABASE_URL"])
        ensure_buckets()
        seed = _seed(n_datasets)
        reset_caches()  # the API process owns the database from here on

        child_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        api_port, bare_port = free_port(), free_port()
        api = _uvicorn("service.app:create_app", api_port, child_env, tmp / "api.log", processes=api_workers)
        stack.callback(_stop, api)
        bare = _uvicorn("service.bench:bare_app", bare_port, child_env, tmp / "bare.log", processes=api_workers)
        stack.callback(_stop, bare)
        api_base, bare_base = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{bare_port}"
        _wait(f"{api_base}/v1/health", api, tmp / "api.log")
        _wait(f"{bare_base}/", bare, tmp / "bare.log")
        health = httpx.get(f"{api_base}/v1/health", timeout=10)
        if health.status_code != 200:  # no generation worker here: "degraded" with 200 is expected
            raise RuntimeError(f"the service is not healthy before the run: {health.text}")

        auth = {"Authorization": f"Bearer {seed['key']}"}
        status_url = f"{api_base}/v1/datasets/{seed['dataset_id']}"
        for url, headers in ((status_url, auth), (f"{bare_base}/", {})):  # warm both
            httpx.get(url, headers=headers, timeout=10).raise_for_status()

        def phase(name: str, url: str, clients: int, script: str, secs: int, watch: bool) -> dict:
            pid = api.pid if watch else bare.pid
            if watch:
                with HealthWatch(api_base) as hw:
                    r = run_wrk(url, clients=clients, seconds=secs, script=script, workdir=tmp, server_pid=pid)
                r["health"] = hw.summary()
            else:
                r = run_wrk(url, clients=clients, seconds=secs, script=script, workdir=tmp, server_pid=pid)
            r["name"] = name
            results["phases"].append(r)
            _print_phase(r)
            return r

        for clients in read_clients:
            bare_r = phase("bare", f"{bare_base}/", clients, _lua({}), seconds, False)
            spread = _spread_lua({"Authorization": f"Bearer {seed['spread_key']}"},
                                 [f"/v1/datasets/{i}" for i in seed["spread_ids"]])
            for name, url, script in (("status", status_url, _lua(auth)),
                                      ("spread", f"{api_base}/v1/datasets/{seed['spread_ids'][0]}", spread),
                                      ("list", f"{api_base}/v1/datasets", _lua(auth))):
                r = phase(name, url, clients, script, seconds, True)
                r["ratio_to_bare"] = r["rate"] / bare_r["rate"] if bare_r["rate"] else 0.0
                print(f"  {name} ÷ bare at {clients} clients: {r['ratio_to_bare']:.2f}")
        body = json.dumps({"conditions": {"Mass": 1}, "purpose": PURPOSE})
        create = _lua({**auth, "Content-Type": "application/json"}, method="POST", body=body)
        many = _lua({"Content-Type": "application/json"}, method="POST", body=body) + (
            "keys = {" + ", ".join(f'"Bearer {k}"' for k in seed["creator_keys"]) + "}\n"
            "request = function() wrk.headers['Authorization'] = keys[math.random(#keys)]; "
            "return wrk.format() end\n")
        phase("create", f"{api_base}/v1/datasets", create_clients, many, create_seconds, True)
        phase("create1", f"{api_base}/v1/datasets", create_clients, create, create_seconds, True)
        results["api_log_tail"] = (tmp / "api.log").read_text(errors="replace")[-2000:]
    return results


def _print_phase(r: dict) -> None:
    line = (f"{r['name']:>6} {r['clients']:>4} clients {r['seconds']:>3}s: {r['rate']:8.1f} req/s  "
            f"p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  max {r['max_ms']:8.1f} ms  "
            f"errors {r['errors']} ({r['requests']} requests)  server CPU {r['server_cpu_ms_per_request']:.2f} ms/req")
    if "health" in r:
        h = r["health"]
        line += f"  health: {h['polls']} polls, slowest {h['max_ms']:.0f} ms, not ok {h['not_ok']}"
    print(line, flush=True)


api_app = typer.Typer(add_completion=False)


@api_app.command("api")
def api_command(
    clients: Annotated[str, typer.Option(help="Concurrent readers, comma-separated (e.g. 1,10,100).")] = "100",
    create_clients: Annotated[int, typer.Option(min=1, help="Concurrent clients creating requests.")] = 20,
    seconds: Annotated[int, typer.Option(min=1, help="Length of each read phase (and of the bare one).")] = 30,
    create_seconds: Annotated[int, typer.Option(min=1, help="Length of the creation phase.")] = 30,
    datasets: Annotated[int, typer.Option(min=1, max=100, help="Datasets the researcher's list holds.")] = 10,
    api_workers: Annotated[int, typer.Option(min=1, max=32, help="Uvicorn processes of the API (and of the bare app); "
                                             "the API image runs 2.")] = 1,
    postgres: Annotated[str, typer.Option(help="Admin URL of the PostgreSQL that gets the scratch database.")] = (
        os.environ.get("XRAYSYNTH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")),
    out: Annotated[Path | None, typer.Option(help="Also write the figures here as JSON.")] = None,
) -> None:
    """Status reads, lists and creation under concurrent clients, and their ratio to a bare FastAPI app."""
    r = run_api_bench(read_clients=[int(c) for c in clients.split(",")], create_clients=create_clients,
                      seconds=seconds, create_seconds=create_seconds, n_datasets=datasets, pg_admin_url=postgres,
                      api_workers=api_workers)
    errors = sum(p["errors"] for p in r["phases"] if p["name"] != "bare")
    stalls = [p for p in r["phases"] if p.get("health", {}).get("not_ok")]
    print(f"API errors: {errors}; phases where /v1/health was not ok: {len(stalls)}")
    if out:
        out.write_text(json.dumps(r, indent=1))
    if errors or stalls:
        print(r["api_log_tail"])
        raise typer.Exit(1)


if __name__ == "__main__":
    api_app()
