"""Operator commands: `migrate`, `serve`, `worker`, `keys`, `run` (one box, embedded defaults), `bench`.

Every heavy import (uvicorn, the Celery worker, torch through workers/) happens inside the command
that needs it: registering these commands must stay cheap and torch-free.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from cli.common import cli_actor, settings_or_exit
from cli.onebox import run_onebox
from service.accounts.models import Account, ApiKey, Role
from service.accounts.service import create_account, create_key, get_by_name, revoke_key
from service.db import make_engine, session_scope
from service.errors import ApiError
from service.migrate import downgrade, upgrade
from service.settings import onebox_settings_path

console = Console()
err_console = Console(stderr=True)


class RoleChoice(StrEnum):
    admin = "admin"
    researcher = "researcher"


def refuse_unknown_pepper(settings) -> None:
    """A key is stored as a hash keyed with the service's pepper. With none configured here the hash
    would use the built-in development pepper, and the printed key would be refused by any service
    that has its own (a one-box run generates one): say what to set instead of printing it."""

    if not settings.pepper_is_default:
        return
    where = onebox_settings_path(settings.var_dir).resolve()
    err_console.print(
        "[bold red]refusing to create a key:[/] no API key pepper is configured here, so the key would be "
        "hashed with the built-in development pepper and a running service would answer 401 to it. "
        f"Set XRAYSYNTH_API_KEY_PEPPER to the service's pepper, or run this where `xraysynth run` keeps "
        f"its settings (looked for {where}; set XRAYSYNTH_VAR_DIR to its var dir)."
    )
    raise typer.Exit(2)


def redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 — not a SQLAlchemy URL (e.g. a broker URL): show the scheme only
        return url.split("://", 1)[0] + "://…" if "@" in url else url


# --------------------------------------------------------------------------------------------- migrate


def migrate(
    downgrade_to: Annotated[
        str | None, typer.Option("--downgrade-to", help="Downgrade to this revision (`base` empties the schema).")
    ] = None,
) -> None:
    """Bring the database schema to the latest revision (or down to `--downgrade-to`)."""
    from alembic.runtime.migration import MigrationContext


    url = settings_or_exit().database_url
    if downgrade_to:
        downgrade(url, downgrade_to)
    else:
        upgrade(url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            heads = MigrationContext.configure(conn).get_current_heads()
    finally:
        engine.dispose()
    console.print(f"[green]database[/] {redacted(url)} is at revision [bold]{', '.join(heads) or 'base'}[/]")


# ---------------------------------------------------------------------------------------------- serve


def serve(
    host: Annotated[str, typer.Option(help="Interface to bind (0.0.0.0 in a container).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Uvicorn worker processes.")] = 1,
    log_level: Annotated[str, typer.Option(help="Uvicorn log level.")] = "info",
) -> None:
    """Run the REST API (never imports torch)."""
    import uvicorn

    settings_or_exit()  # refuse default secrets before binding a port
    uvicorn.run("service.app:create_app", factory=True, host=host, port=port, workers=workers, log_level=log_level)


# --------------------------------------------------------------------------------------------- worker


class Pool(StrEnum):
    solo = "solo"
    prefork = "prefork"
    threads = "threads"


def worker(
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Tasks at once (default 1: one worker per GPU).")
    ] = None,
    pool: Annotated[
        Pool | None, typer.Option(help="Celery pool (default: solo for one task, prefork for more).")
    ] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "info",
) -> None:
    """Run a generation worker (Celery) that consumes approved datasets."""
    import importlib.util

    settings_or_exit()
    # Checked up front: Celery would start without torch and only fail on the first task (the API
    # image has no torch and no models/).
    missing = [m for m in ("torch", "models") if importlib.util.find_spec(m) is None]
    if missing:
        err_console.print(f"[red]the worker needs the `worker` extra and models/ (missing: {', '.join(missing)})[/]")
        raise typer.Exit(1)
    try:
        # lazy: the API image has no workers/, and the worker's parent must not import torch early
        from workers.main import run_worker
    except ImportError as exc:
        err_console.print(f"[red]the worker is not available in this installation:[/] {exc}")
        raise typer.Exit(1) from None
    run_worker(concurrency=concurrency, loglevel=loglevel, pool=pool.value if pool else None)


# ----------------------------------------------------------------------------------------------- keys

keys_app = typer.Typer(help="Create, revoke and list API keys (shown once; stored as a keyed hash).", no_args_is_help=True)


@keys_app.command("create")
def keys_create(
    role: Annotated[RoleChoice, typer.Option(help="Role of the account.")],
    name: Annotated[str, typer.Option(help="Account name; created if it does not exist.")],
    quota: Annotated[int | None, typer.Option(min=0, help="Image quota for a new account.")] = None,
    plain: Annotated[bool, typer.Option("--plain", help="Print only the key (for scripts).")] = False,
) -> None:
    """Create a key for an account (creating the account if missing). The key is printed once."""

    refuse_unknown_pepper(settings_or_exit())
    actor = cli_actor()
    with session_scope() as session:
        account = get_by_name(session, name=name)
        created = account is None
        if account is None:
            account = create_account(session, name=name, role=Role(role.value), actor=actor, image_quota=quota)
        elif account.role.value != role.value:
            err_console.print(f"[red]account {name!r} exists with role {account.role.value}, not {role.value}[/]")
            raise typer.Exit(1)
        key, secret = create_key(session, account=account, actor=actor)
        summary = (account.name, account.role.value, account.image_quota, key.prefix, key.id)
    if plain:
        typer.echo(secret)
        return
    if not created and quota is not None and quota != summary[2]:
        err_console.print(f"[yellow]account exists: quota left at {summary[2]} (change it with PATCH /v1/accounts)[/]")
    body = (
        f"[bold]{secret}[/]\n\n"
        f"account [cyan]{summary[0]}[/] ({summary[1]}{', new' if created else ''}), quota {summary[2]} images\n"
        f"key id {summary[4]}  prefix {summary[3]}\n"
        "[dim]Shown once: only a keyed hash is stored. Send it as `Authorization: Bearer <key>`.[/]"
    )
    console.print(Panel(body, title="new API key", border_style="green", expand=False))


@keys_app.command("revoke")
def keys_revoke(prefix_or_id: Annotated[str, typer.Argument(help="The key's prefix (as listed) or its id.")]) -> None:
    """Revoke a key: requests with it get 401 from now on."""

    settings_or_exit()
    try:
        key_id = uuid.UUID(prefix_or_id)
    except ValueError:
        key_id = None
    try:
        with session_scope() as session:
            key = revoke_key(session, key_id=key_id, prefix=None if key_id else prefix_or_id, actor=cli_actor())
            prefix, account = key.prefix, key.account.name
    except ApiError as exc:
        err_console.print(f"[red]{exc.message}[/]")
        raise typer.Exit(1) from None
    console.print(f"[green]revoked[/] key {prefix} of account {account}")


@keys_app.command("list")
def keys_list(
    include_revoked: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
) -> None:
    """List keys by prefix (the keys themselves are never stored)."""
    from sqlalchemy import select


    settings_or_exit()
    with session_scope() as session:
        q = select(ApiKey, Account).join(Account, ApiKey.account_id == Account.id).order_by(ApiKey.created_at)
        if not include_revoked:
            q = q.where(ApiKey.revoked_at.is_(None))
        rows = session.execute(q).all()
    table = Table("prefix", "account", "role", "created", "revoked", "key id")
    for key, account in rows:
        table.add_row(
            key.prefix, account.name + (" (disabled)" if account.disabled else ""), account.role.value,
            f"{key.created_at:%Y-%m-%d %H:%M}", f"{key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "",
            str(key.id),
        )
    console.print(table)


# ------------------------------------------------------------------------------------------------ run


def run(
    port: Annotated[int | None, typer.Option(help="API port (default 8000, or a free one if 8000 is taken).")] = None,
    host: Annotated[str, typer.Option(help="Interface the API binds.")] = "127.0.0.1",
    var_dir: Annotated[
        Path | None,
        typer.Option(help="Where state lives: database fallback, S3 data, secrets, logs, the settings other "
                          "commands read (default: XRAYSYNTH_VAR_DIR, else ./var)."),
    ] = None,
    embedded: Annotated[
        bool, typer.Option("--embedded", help="Ignore local PostgreSQL/Redis: SQLite and a private redis-server.")
    ] = False,
    bootstrap: Annotated[bool, typer.Option(help="Register and publish the shipped default model if none is published.")] = True,
    with_worker: Annotated[bool, typer.Option("--worker/--no-worker", help="Start one generation worker.")] = True,
) -> None:
    """Run everything on this box: API, one worker, S3 (embedded SeaweedFS), local or embedded DB/broker."""

    raise typer.Exit(
        run_onebox(port=port, host=host, var_dir=var_dir, embedded=embedded, bootstrap=bootstrap, with_worker=with_worker)
    )


# ---------------------------------------------------------------------------------------------- bench

bench_app = typer.Typer(help="Benchmarks.", no_args_is_help=True)


@bench_app.command(
    "pipeline",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def bench_pipeline(ctx: typer.Context) -> None:
    """Generation pipeline throughput (workers.bench.run_pipeline_bench); options are the bench's own."""
    try:
        # lazy: the API image has no workers/, and torch loads only once the bench runs
        import workers.bench as bench
    except ModuleNotFoundError as exc:
        if exc.name and "workers.bench".startswith(exc.name):  # missing itself, not one of its imports
            err_console.print("[red]`xraysynth bench pipeline` is not available in this installation "
                              "(workers.bench is missing)[/]")
            raise typer.Exit(1) from None
        raise
    typer.main.get_command(bench.pipeline_app).main(args=list(ctx.args), prog_name="xraysynth bench pipeline",
                                                    standalone_mode=True)


@bench_app.command(
    "api",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def bench_api(ctx: typer.Context) -> None:
    """The API under 100 concurrent clients against a bare FastAPI app (service.bench); options are the bench's own."""
    from service.bench import api_app  # lazy: keeps the root CLI cheap (the bench pulls in FastAPI, psycopg)

    typer.main.get_command(api_app).main(args=list(ctx.args), prog_name="xraysynth bench api", standalone_mode=True)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root CLI."""
    app.command()(migrate)
    app.command()(serve)
    app.command()(worker)
    app.add_typer(keys_app, name="keys")
    app.command()(run)
    app.add_typer(bench_app, name="bench")
