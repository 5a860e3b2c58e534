"""`xraysynth run`: the whole service on one box, with nothing to install beyond this package.

Uses what the machine already runs (PostgreSQL, Redis on their default local ports) and falls back to
what it can run itself: SQLite; a private redis-server, or without that binary Celery's folder broker
with in-memory rate limits (the API works; generation waits for Redis, where the workers keep their
leases). S3 is always an embedded SeaweedFS with credentials generated once and kept in the var dir.
The API and one worker run as child processes with the same XRAYSYNTH_* environment; Ctrl-C (or
SIGTERM) stops every one of them.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx
import redis
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from cli.hospital import bootstrap_default_model
from cli.onebox_state import (
    RunKey,
    apply_env,
    choose_broker,
    choose_database,
    configured,
    default_var_dir,
    ensure_accounts,
    load_secrets,
    record_settings,
)
from cli.supervisor import Child, Stop, Supervisor
from service import heartbeat
from service.db import session_scope
from service.embedded import free_port, port_open, start_redis, start_seaweedfs
from service.migrate import upgrade
from service.modelversions.models import ModelStatus, ModelVersion
from service.settings import get_settings
from service.storage import ensure_buckets

console = Console()

DEFAULT_API_PORT = 8000
DEFAULT_S3_PORT = 8333




# ------------------------------------------------------------------------------------------- children


def tell_health_about_the_worker(child: Child, how: str | None, delay: float) -> None:
    """While the worker is down, /v1/health says so at once (its last report would take a few seconds
    to age out) and says that it is being restarted."""
    if child.name != "worker":
        return
    try:
        if how is not None:  # the note first: health never shows the worker gone without saying why
            heartbeat.set_note(f"the one-box supervisor restarts it in {delay:.0f} s; it was {how}", ttl_s=delay + 120)
            heartbeat.forget(heartbeat.node_id(child.proc.pid))
        else:
            heartbeat.set_note(f"the one-box supervisor restarted it (restart {child.restarts}); it reports "
                               "once started", ttl_s=120)
    except redis.RedisError:
        pass  # the broker is down too: health names that


def wait_healthy(url: str, sup: Supervisor, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        for child in sup.children:
            if not child.alive():
                raise RuntimeError(f"{child.name} exited (code {child.proc.returncode}) while starting:\n{child.tail()}")
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == 200:
                return r.json()
            last = r.text
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.3)
    raise RuntimeError(f"the API was not healthy within {timeout:.0f}s: {last}")


# ---------------------------------------------------------------------------------------------- summary


def other_shells_note(var_dir: Path) -> str:
    if var_dir == default_var_dir().resolve():
        return f"commands started here read the same settings ({var_dir.name}/settings.json)"
    return f"set XRAYSYNTH_VAR_DIR={var_dir} for commands to read the same settings"


def print_summary(*, api: str, s3: str, labels: dict[str, str], keys: list[RunKey], var_dir: Path,
                  log_dir: Path, models_note: str | None, worker_note: str) -> None:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    table.add_row("API", api)
    table.add_row("console", f"{api}/ui/  (sign in with a key below)")
    table.add_row("docs", f"{api}/docs")
    table.add_row("S3", f"{s3}  (embedded SeaweedFS; credentials in {var_dir / 'secrets.json'})")
    for part, label in labels.items():
        table.add_row(part, label)
    table.add_row("worker", worker_note)
    if models_note:
        table.add_row("models", models_note)
    table.add_row("logs", str(log_dir))
    table.add_row("other shells", other_shells_note(var_dir))
    for k in keys:
        shown = k.key or f"[yellow]{k.prefix}… exists; a key is shown only when created (`xraysynth keys create`)[/]"
        table.add_row(f"{k.role} key", f"[dim]{k.account}[/]")
        table.add_row("", shown)
    console.print(Panel(table, title="xraysynth is running", border_style="green", expand=False))

    by_role = {k.role: (k.key or "<key>") for k in keys}
    r, a = by_role.get("researcher", "<key>"), by_role.get("admin", "<key>")
    examples = [
        "# conditions on offer (from published models)",
        f"curl -s {api}/v1/conditions -H 'Authorization: Bearer {r}'",
        "# ask for a dataset (the condition must be offered by a published model)",
        (f"curl -s -X POST {api}/v1/datasets -H 'Authorization: Bearer {r}' -H 'Content-Type: application/json' "
         "-d '{\"conditions\": {\"Effusion\": 64}, \"purpose\": \"trying xraysynth on one box before a real request\"}'"),
        "# see it pending (DATASET_ID = the id in the answer above)",
        f"curl -s {api}/v1/datasets/$DATASET_ID -H 'Authorization: Bearer {r}'",
        "# the admin's review queue, then approve",
        f"curl -s '{api}/v1/reviews?status=pending' -H 'Authorization: Bearer {a}'",
        (f"curl -s -X POST {api}/v1/datasets/$DATASET_ID/reviews -H 'Authorization: Bearer {a}' "
         "-H 'Content-Type: application/json' -d '{\"decision\": \"approve\", \"reason\": \"fine for testing\"}'"),
        "# once ready: signed download URLs",
        f"curl -s {api}/v1/datasets/$DATASET_ID/download -H 'Authorization: Bearer {r}'",
    ]
    console.rule("try it")
    for line in examples:  # plain lines, never wrapped or boxed: they must paste into a shell intact
        console.print(line, soft_wrap=True, markup=False, highlight=False, style="dim" if line.startswith("#") else None)
    console.rule()
    console.print("Ctrl-C stops everything started here.")


# ------------------------------------------------------------------------------------------------- run


def run_onebox(*, port: int | None, host: str, var_dir: Path | None, embedded: bool, bootstrap: bool,
               with_worker: bool) -> int:
    from pydantic import ValidationError


    var_dir = (var_dir or default_var_dir()).resolve()
    var_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(var_dir, 0o700)  # secrets, keys and the SQLite database live here
    log_dir = var_dir / "logs"
    log_dir.mkdir(exist_ok=True)

    if port is None:
        port = DEFAULT_API_PORT if not port_open(host, DEFAULT_API_PORT) else free_port()
    elif port_open(host, port):
        console.print(f"[red]port {port} on {host} is in use; pick another with --port[/]")
        return 1
    s3_port = DEFAULT_S3_PORT if not port_open("127.0.0.1", DEFAULT_S3_PORT) else free_port()

    sup = Supervisor(console, on_restart=tell_health_about_the_worker)
    sup.install()
    try:
        creds = load_secrets(var_dir)
        env: dict[str, str] = {"XRAYSYNTH_ENVIRONMENT": configured("XRAYSYNTH_ENVIRONMENT") or "development",
                               "XRAYSYNTH_VAR_DIR": str(var_dir)}
        db_choice, broker_choice = choose_database(var_dir, embedded), choose_broker(var_dir, embedded)
        env.update(db_choice.env)
        env.update(broker_choice.env)
        if "XRAYSYNTH_BROKER_FOLDER" in env:  # kombu's folder transport expects its folders to exist
            for folder in (env["XRAYSYNTH_BROKER_FOLDER"], env["XRAYSYNTH_BROKER_FOLDER"] + "-processed"):
                Path(folder).mkdir(parents=True, exist_ok=True)
        if not configured("XRAYSYNTH_API_KEY_PEPPER"):
            env["XRAYSYNTH_API_KEY_PEPPER"] = creds["api_key_pepper"]
        if not configured("XRAYSYNTH_TRAINSET_DIR"):
            env["XRAYSYNTH_TRAINSET_DIR"] = str(var_dir / "trainset")

        with console.status("starting the embedded S3 store (SeaweedFS)…"), sup.critical():
            s3 = start_seaweedfs(var_dir / "s3", access_key=creds["s3_access_key_id"],
                                 secret_key=creds["s3_secret_access_key"], s3_port=s3_port)
            sup.servers.append(s3)
        if broker_choice.start_redis:
            with sup.critical():
                redis = start_redis(var_dir / "redis")
                sup.servers.append(redis)
            env.update({"XRAYSYNTH_BROKER_URL": redis.endpoint + "/0",
                        "XRAYSYNTH_RATE_LIMIT_STORAGE_URL": redis.endpoint + "/1"})
            broker_choice.label = broker_choice.label.replace("embedded redis-server",
                                                              f"embedded redis-server {redis.endpoint}")
        env.update({
            "XRAYSYNTH_S3_ENDPOINT_URL": s3.endpoint,
            "XRAYSYNTH_S3_PUBLIC_ENDPOINT_URL": s3.endpoint,
            "XRAYSYNTH_S3_ACCESS_KEY_ID": creds["s3_access_key_id"],
            "XRAYSYNTH_S3_SECRET_ACCESS_KEY": creds["s3_secret_access_key"],
        })
        record_settings(var_dir, env)
        apply_env(env)
        try:
            settings = get_settings()
        except ValidationError as exc:
            console.print(f"[red]configuration refused:[/] {exc.errors()[0]['msg']}")
            return 2


        with console.status("migrating the database…"):
            upgrade(settings.database_url)
        ensure_buckets()

        bootstrap_note = f"{published_models()} (bootstrap skipped: --no-bootstrap)"
        if bootstrap:

            try:
                bootstrap_note = bootstrap_default_model(console)
            except Exception as exc:  # noqa: BLE001 — the service is still useful without a model: say why, go on
                bootstrap_note = f"[yellow]default model not bootstrapped: {type(exc).__name__}: {exc}[/]"
                console.print(bootstrap_note)
        keys = ensure_accounts(var_dir, development=settings.is_development)

        child_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        sup.start("api", [
            sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory", "--host", host,
            "--port", str(port), "--log-level", "info",
        ], child_env, log_dir)
        worker_ok = with_worker and _worker_available() and not settings.broker_url.startswith("filesystem://")
        worker_note = "1 Celery worker (solo pool)" if worker_ok else "[yellow]none (--no-worker)[/]"
        if with_worker and not worker_ok:
            worker_note = ("[yellow]none: the worker needs Redis (its leases live there); approved requests "
                           "wait until it runs[/]" if _worker_available() else
                           "[yellow]none: this installation lacks the worker extra (torch); requests wait in the queue[/]")
        if worker_ok:
            sup.start("worker", [
                sys.executable, "-c", "from cli import app; app(prog_name='xraysynth')",
                "worker", "--concurrency", "1", "--pool", "solo",
            ], child_env, log_dir)

        shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        api_url = f"http://{shown_host}:{port}"
        with console.status(f"waiting for {api_url}/v1/health…"):
            wait_healthy(f"{api_url}/v1/health", sup)
        labels = {"database": db_choice.label, "broker": broker_choice.label}
        print_summary(api=api_url, s3=s3.endpoint, labels=labels, keys=keys, var_dir=var_dir,
                      log_dir=log_dir, models_note=bootstrap_note, worker_note=worker_note)

        while True:  # supervise until a signal raises Stop: a child that dies is restarted (with backoff)
            sup.check_children()
            sup.rotate_logs()
            for server in sup.servers:
                if server.proc.poll() is not None:
                    console.print(f"[red]{server.name} exited unexpectedly; stopping everything. See {server.log_path}[/]")
                    return 1
            time.sleep(0.5)
    except (Stop, KeyboardInterrupt):
        console.print("\n[bold]stopping…[/]")
        return 0
    except RuntimeError as exc:
        console.print(f"[red]{exc}[/]")
        return 1
    finally:
        sup.stop_all()
        console.print(f"stopped: {', '.join(sup.names()) or 'nothing was running'}")


def published_models() -> str:
    from sqlalchemy import select


    with session_scope() as session:
        rows = session.execute(
            select(ModelVersion.name, ModelVersion.version).where(ModelVersion.status == ModelStatus.published)
        ).all()
    return ", ".join(f"{n} {v}" for n, v in rows) + " published" if rows else "no published model"


def _worker_available() -> bool:
    import importlib.util

    try:
        return all(importlib.util.find_spec(m) is not None for m in ("workers.main", "torch", "models"))
    except ImportError:
        return False
