"""Test harness on real services: a fresh PostgreSQL database per session (migrated with Alembic),
a private redis-server and a private SeaweedFS S3 server with credentials, started for the session.
Nothing is mocked; each test starts from empty tables and an empty Redis."""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

# Settings are read from the environment: fix it before any service module caches them.
os.environ["XRAYSYNTH_ENVIRONMENT"] = "test"
# A developer's one-box run leaves var/settings.json in the checkout; settings read it as defaults, so
# point every test at a var dir that does not exist (tests that need one pass their own).
os.environ["XRAYSYNTH_VAR_DIR"] = f"/nonexistent/xraysynth-test-var-{os.getpid()}"

PG_ADMIN_URL = os.environ.get("XRAYSYNTH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


@dataclass
class Infra:
    env: dict[str, str]
    database_url: str
    redis: object
    s3: object
    root: Path


def _reset_service_caches() -> None:
    from service import db, deps, queue, storage

    db.reset_caches()
    storage.reset_clients()
    deps.reset_limiter()
    queue.client.cache_clear()


@pytest.fixture(scope="session")
def infra(tmp_path_factory) -> Iterator[Infra]:
    from service.embedded import start_redis, start_seaweedfs

    root = tmp_path_factory.mktemp("infra")
    access_key, secret_key = "test-" + secrets.token_hex(6), secrets.token_urlsafe(24)
    redis = start_redis(root / "redis")
    s3 = start_seaweedfs(root / "s3", access_key=access_key, secret_key=secret_key)

    db_name = f"xraysynth_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    database_url = f"{base}/{db_name}"

    env = {
        "XRAYSYNTH_ENVIRONMENT": "test",
        "XRAYSYNTH_DATABASE_URL": database_url,
        "XRAYSYNTH_BROKER_URL": f"{redis.endpoint}/0",
        "XRAYSYNTH_RATE_LIMIT_STORAGE_URL": f"{redis.endpoint}/1",
        "XRAYSYNTH_S3_ENDPOINT_URL": s3.endpoint,
        "XRAYSYNTH_S3_ACCESS_KEY_ID": access_key,
        "XRAYSYNTH_S3_SECRET_ACCESS_KEY": secret_key,
        "XRAYSYNTH_API_KEY_PEPPER": secrets.token_urlsafe(24),
        "XRAYSYNTH_RATE_LIMIT": "1000/minute",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    _reset_service_caches()

    from service.migrate import upgrade
    from service.storage import ensure_buckets

    upgrade(database_url)
    ensure_buckets()
    try:
        yield Infra(env=env, database_url=database_url, redis=redis, s3=s3, root=root)
    finally:
        from service import db

        db.reset_caches()
        redis.stop()
        s3.stop()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _truncate_all() -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from service.db import get_engine
    from service.tables import Base

    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    # DELETE with triggers off (the audit table's append-only trigger, FK checks) takes ~1 ms on these
    # small tables; TRUNCATE takes ~150 ms, twice per test. Needs a superuser; else fall back to TRUNCATE.
    try:
        with get_engine().begin() as conn:
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            for name in tables:
                conn.execute(text(f'DELETE FROM "{name}"'))
            conn.execute(text("ALTER SEQUENCE audit_events_id_seq RESTART"))
        return
    except DBAPIError:
        pass
    names = ", ".join(f'"{n}"' for n in tables)
    with get_engine().begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture
def clean(infra) -> Iterator[Infra]:
    """Empty tables and Redis around each test that touches them."""
    import redis as redis_lib

    _truncate_all()
    redis_lib.Redis.from_url(infra.redis.endpoint).flushall()
    _reset_service_caches()
    yield infra
    _truncate_all()


@pytest.fixture
def db(clean):
    from service.db import get_sessionmaker

    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


@dataclass
class User:
    id: uuid.UUID
    name: str
    role: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture
def make_user(clean):
    from service.accounts.models import Role
    from service.accounts.service import create_account, create_key
    from service.audit.service import SYSTEM
    from service.db import session_scope

    def make(role: str = "researcher", name: str | None = None, image_quota: int | None = None) -> User:
        name = name or f"{role}-{uuid.uuid4().hex[:6]}"
        with session_scope() as session:
            account = create_account(session, name=name, role=Role(role), actor=SYSTEM, image_quota=image_quota)
            _, plain = create_key(session, account=account, actor=SYSTEM)
            return User(id=account.id, name=name, role=role, key=plain)

    return make


@pytest.fixture
def researcher(make_user) -> User:
    return make_user("researcher", "alice")


@pytest.fixture
def researcher_b(make_user) -> User:
    return make_user("researcher", "bob")


@pytest.fixture
def admin(make_user) -> User:
    return make_user("admin", "carol-admin")


@pytest.fixture
def admin2(make_user) -> User:
    return make_user("admin", "dave-admin")


@pytest.fixture
def api(clean):
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as client:
        yield client
