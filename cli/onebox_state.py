"""The one box's state and backends: the var dir's private files (generated secrets, the settings
other commands read, the development keys), which database and broker this machine offers, and the
accounts `xraysynth run` makes sure exist."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from cli.common import cli_actor
from service import db, deps, queue, storage
from service.accounts.models import ApiKey, Role
from service.accounts.service import account_for_key, create_account, create_key, get_by_name
from service.db import session_scope
from service.embedded import port_open
from service.settings import DEFAULT_VAR_DIR, Settings, onebox_settings_path

LOCAL_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/xraysynth"
LOCAL_REDIS = "redis://127.0.0.1:6379"
ADMIN_NAME, RESEARCHER_NAME = "local-admin", "local-researcher"


# --------------------------------------------------------------------------------------------- files


def write_private_json(path: Path, data: dict) -> None:
    """Write a file only this user can read (created 0600, then atomically moved into place)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def load_secrets(var_dir: Path) -> dict:
    """S3 credentials and the key pepper, generated on the first run and reused after (keys stay valid)."""
    path = var_dir / "secrets.json"
    data = read_json(path)
    wanted = {
        "s3_access_key_id": lambda: "xraysynth-" + secrets.token_hex(6),
        "s3_secret_access_key": lambda: secrets.token_urlsafe(32),
        "api_key_pepper": lambda: secrets.token_urlsafe(32),
    }
    if not all(data.get(k) for k in wanted):
        data = {k: data.get(k) or make() for k, make in wanted.items()}
        write_private_json(path, data)
    else:
        os.chmod(path, 0o600)
    return data


def record_settings(var_dir: Path, env: dict[str, str]) -> Path:
    """Write every setting the service runs with to <var dir>/settings.json (0600), where commands
    started from other shells find them (service.settings reads it under the environment and .env).
    Only explicit inputs are recorded, so a value dropped from the environment does not live on."""
    from dotenv import dotenv_values


    given = {**dotenv_values(".env"), **os.environ, **env}
    fields = {name for name in Settings.model_fields}
    data = {k.removeprefix("XRAYSYNTH_").lower(): v for k, v in given.items()
            if k.startswith("XRAYSYNTH_") and v is not None and k.removeprefix("XRAYSYNTH_").lower() in fields}
    path = onebox_settings_path(var_dir)
    write_private_json(path, data)
    return path


def default_var_dir() -> Path:
    """Where state lives unless --var-dir says otherwise: the rule service.settings uses to find it."""

    return Path(configured("XRAYSYNTH_VAR_DIR") or DEFAULT_VAR_DIR)


# ------------------------------------------------------------------------------------- choose backends


def configured(name: str) -> str | None:
    """A setting the user gave, in the environment or in .env (where the settings also look)."""
    from dotenv import dotenv_values

    return os.environ.get(name) or dotenv_values(".env").get(name) or None


@dataclass
class Choice:
    env: dict[str, str]
    label: str
    start_redis: bool = False  # the caller starts a private redis-server and fills in its URLs


def _postgres_database(url: str) -> None:
    """Connect to the database, creating it first if the server says it does not exist."""
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    params = {"host": u.host, "port": u.port or 5432, "user": u.username, "password": u.password, "connect_timeout": 3}
    try:
        psycopg.connect(dbname=u.database, **params).close()
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
        with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
            conn.execute(f'CREATE DATABASE "{u.database}"')


def choose_database(var_dir: Path, embedded: bool) -> Choice:
    if configured("XRAYSYNTH_DATABASE_URL"):
        return Choice({}, "configured (XRAYSYNTH_DATABASE_URL)")
    why = "--embedded"
    if not embedded:
        why = "no PostgreSQL on 127.0.0.1:5432"
        if port_open("127.0.0.1", 5432):
            try:
                _postgres_database(LOCAL_PG_URL)
                return Choice({"XRAYSYNTH_DATABASE_URL": LOCAL_PG_URL}, "local PostgreSQL (database xraysynth)")
            except Exception as exc:  # noqa: BLE001 — reachable but unusable (auth, permissions): say so, fall back
                why = f"local PostgreSQL unusable: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
    url = f"sqlite:///{(var_dir / 'xraysynth.db').resolve()}"
    return Choice({"XRAYSYNTH_DATABASE_URL": url}, f"embedded SQLite {var_dir / 'xraysynth.db'} (fallback: {why})")


def _redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2).ping())
    except Exception:  # noqa: BLE001 — anything that is not a PONG means "no usable Redis here"
        return False


def choose_broker(var_dir: Path, embedded: bool) -> Choice:
    given = configured("XRAYSYNTH_BROKER_URL")
    if given:
        env = {}
        if given.startswith("filesystem://"):  # a folder broker needs no server, but an absolute folder
            env["XRAYSYNTH_BROKER_FOLDER"] = configured("XRAYSYNTH_BROKER_FOLDER") or str((var_dir / "broker").resolve())
            env["XRAYSYNTH_RATE_LIMIT_STORAGE_URL"] = configured("XRAYSYNTH_RATE_LIMIT_STORAGE_URL") or "memory://"
        return Choice(env, f"configured (XRAYSYNTH_BROKER_URL={given.split('@')[-1]})")
    why = "--embedded"
    if not embedded:
        why = "no Redis answering on 127.0.0.1:6379"
        if port_open("127.0.0.1", 6379) and _redis_answers(LOCAL_REDIS + "/0"):
            return Choice(
                {"XRAYSYNTH_BROKER_URL": LOCAL_REDIS + "/0", "XRAYSYNTH_RATE_LIMIT_STORAGE_URL": LOCAL_REDIS + "/1"},
                "local Redis 127.0.0.1:6379 (broker db 0, rate limits db 1)",
            )
    # The workers keep their leases in the broker's Redis, so a private redis-server (if the binary is
    # installed) keeps generation working; the folder broker is the last resort: the API works, generation
    # waits until Redis is available.
    if redis_server_binary():
        return Choice({}, f"embedded redis-server in {var_dir / 'redis'}, not persisted (fallback: {why})",
                      start_redis=True)
    folder = (var_dir / "broker").resolve()
    return Choice(
        {"XRAYSYNTH_BROKER_URL": "filesystem://", "XRAYSYNTH_BROKER_FOLDER": str(folder),
         "XRAYSYNTH_RATE_LIMIT_STORAGE_URL": "memory://"},
        f"embedded folder broker {var_dir / 'broker'} + in-memory rate limits (fallback: {why}; no redis-server installed)",
    )


def redis_server_binary() -> str | None:
    local = Path(sys.executable).parent / "redis-server"
    return str(local) if local.exists() else shutil.which("redis-server")


def apply_env(env: dict[str, str]) -> None:
    """Point this process's settings at the chosen backends (the children get the same variables)."""

    os.environ.update(env)
    db.reset_caches()
    storage.reset_clients()
    deps.reset_limiter()
    queue.client.cache_clear()


# ------------------------------------------------------------------------------------------- accounts


@dataclass
class RunKey:
    role: str
    account: str
    key: str | None  # None: an existing key we cannot show again (outside development)
    prefix: str


def ensure_accounts(var_dir: Path, *, development: bool) -> list[RunKey]:
    """An admin and a researcher with working keys. In development the plain keys are kept in
    var/run-keys.json (0600) so a second run shows the same ones; elsewhere a key is shown only once."""
    from sqlalchemy import select


    path = var_dir / "run-keys.json"
    stored = read_json(path) if development else {}
    actor = cli_actor()
    out: list[RunKey] = []
    with session_scope() as session:
        for role, name in ((Role.admin, ADMIN_NAME), (Role.researcher, RESEARCHER_NAME)):
            account = get_by_name(session, name=name) or create_account(session, name=name, role=role, actor=actor)
            if account.role != role:
                raise RuntimeError(f"account {name!r} exists with role {account.role.value}; expected {role.value}")
            plain = (stored.get(role.value) or {}).get("key")
            found = account_for_key(session, plain_key=plain) if plain else None
            if found and found[0].id == account.id:
                out.append(RunKey(role.value, name, plain, found[1].prefix))
                continue
            active = session.scalars(
                select(ApiKey).where(ApiKey.account_id == account.id, ApiKey.revoked_at.is_(None))
            ).first()
            if active is not None and not development:
                out.append(RunKey(role.value, name, None, active.prefix))
                continue
            key, plain = create_key(session, account=account, actor=actor)
            out.append(RunKey(role.value, name, plain, key.prefix))
    if development:
        write_private_json(path, {k.role: {"account": k.account, "key": k.key, "prefix": k.prefix} for k in out})
    return out
