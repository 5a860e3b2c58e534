"""`xraysynth keys create|list|revoke` against the test database: the key is shown once, stored as a
keyed hash, works on the API, stops working after revocation, and every change is audited as `cli`."""

from __future__ import annotations

import re

from sqlalchemy import select
from typer.testing import CliRunner

from cli import app

runner = CliRunner()
KEY = re.compile(r"xs_[A-Za-z0-9_-]{43}")


def cli(*args: str):
    result = runner.invoke(app, list(args), prog_name="xraysynth", env={"COLUMNS": "200"})
    return result


def test_create_use_list_revoke(clean, api):
    from service.accounts.keys import hash_api_key
    from service.accounts.models import Account, ApiKey
    from service.audit.models import AuditEvent
    from service.db import session_scope
    from service.settings import get_settings

    r = cli("keys", "create", "--role", "researcher", "--name", "eve", "--quota", "500")
    assert r.exit_code == 0, r.output
    keys = KEY.findall(r.output)
    assert len(keys) == 1, r.output
    key = keys[0]
    assert "Shown once" in r.output

    with session_scope() as s:
        account = s.scalar(select(Account).where(Account.name == "eve"))
        assert account.role.value == "researcher" and account.image_quota == 500
        stored = s.scalars(select(ApiKey)).all()
        assert len(stored) == 1
        assert stored[0].key_hash == hash_api_key(key, get_settings().api_key_pepper)
        assert all(key not in str(v) for v in (stored[0].prefix, stored[0].key_hash))
        prefix = stored[0].prefix

    headers = {"Authorization": f"Bearer {key}"}
    assert api.get("/v1/conditions", headers=headers).status_code == 200

    r = cli("keys", "list")
    assert r.exit_code == 0, r.output
    assert prefix in r.output and "eve" in r.output and key not in r.output

    r = cli("keys", "revoke", prefix)
    assert r.exit_code == 0, r.output
    assert api.get("/v1/conditions", headers=headers).status_code == 401
    assert prefix not in cli("keys", "list").output
    assert prefix in cli("keys", "list", "--all").output

    with session_scope() as s:
        events = s.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
        assert [e.action for e in events] == ["account.create", "key.create", "key.revoke"]
        assert {e.actor_name for e in events} == {"cli"}


def test_second_key_for_an_existing_account_and_plain_output(clean, api):
    first = cli("keys", "create", "--role", "admin", "--name", "root-admin", "--plain")
    second = cli("keys", "create", "--role", "admin", "--name", "root-admin", "--plain")
    assert first.exit_code == second.exit_code == 0
    k1, k2 = first.stdout.strip(), second.stdout.strip()
    assert KEY.fullmatch(k1) and KEY.fullmatch(k2) and k1 != k2
    for k in (k1, k2):  # an admin key on an admin route
        assert api.get("/v1/audit", headers={"Authorization": f"Bearer {k}"}).status_code == 200

    # revoke by id works too
    from service.accounts.models import ApiKey
    from service.db import session_scope

    with session_scope() as s:
        key_id = str(s.scalars(select(ApiKey).order_by(ApiKey.created_at)).first().id)
    assert cli("keys", "revoke", key_id).exit_code == 0
    assert api.get("/v1/audit", headers={"Authorization": f"Bearer {k1}"}).status_code == 401
    assert api.get("/v1/audit", headers={"Authorization": f"Bearer {k2}"}).status_code == 200


def test_refusals_are_clean(clean):
    assert cli("keys", "create", "--role", "researcher", "--name", "zed").exit_code == 0
    r = cli("keys", "create", "--role", "admin", "--name", "zed")  # not silently promoted
    assert r.exit_code == 1 and "role researcher" in r.output
    r = cli("keys", "revoke", "xs_nope00")
    assert r.exit_code == 1 and "no active key" in r.output
    r = cli("keys", "create", "--role", "superuser", "--name", "x")
    assert r.exit_code == 2
