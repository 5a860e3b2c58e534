"""Schema-level guarantees on the real Postgres: migrations go up and down cleanly, and the audit log is
append-only in the database itself."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import DBAPIError

from tests.conftest import PG_ADMIN_URL


def test_migrations_up_down_up_on_a_fresh_database(infra):
    from service.migrate import downgrade, upgrade
    from service.tables import Base

    name = f"xraysynth_mig_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = infra.database_url.rsplit("/", 1)[0] + f"/{name}"
    engine = create_engine(url)
    try:
        upgrade(url)
        assert set(inspect(engine).get_table_names()) == {t.name for t in Base.metadata.sorted_tables} | {"alembic_version"}
        with engine.connect() as conn:  # the migrated schema is the one the models declare
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        downgrade(url, "base")
        inspector = inspect(engine)
        assert set(inspector.get_table_names()) <= {"alembic_version"}
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM pg_proc WHERE proname = 'audit_events_append_only'")).scalar() == 0
        upgrade(url)
        assert "audit_events" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("statement", ["UPDATE audit_events SET action = 'forged'", "DELETE FROM audit_events"])
def test_audit_rows_cannot_be_changed(db, researcher, statement):
    from service.audit.models import AuditEvent

    assert db.query(AuditEvent).count() >= 2  # the fixture's account.create and key.create
    with pytest.raises(DBAPIError, match="append-only"):
        db.execute(text(statement))
    db.rollback()
    assert db.query(AuditEvent).filter_by(action="forged").count() == 0


def test_a_model_version_keeps_its_whole_architecture(db):
    """The shipped default's description (86 characters) was cut to 80 on cards and the console."""
    from models.registry import ARCHITECTURE
    from service.modelversions.rows import model_version_row

    card = {"architecture": ARCHITECTURE + " (and a longer note a hospital may add to its own card)" * 3}
    row = model_version_row(card=card, sha256="0" * 64, name="long-architecture", version="1")
    db.add(row)
    db.commit()
    db.expire_all()
    assert db.get(type(row), row.id).architecture == card["architecture"]
